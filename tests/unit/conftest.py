"""Fixtures of the runtime-provider tests: a private runtime folder, and this process's footprint."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, List, Tuple

import pytest


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where providers write their objects during the test (``USDTKIT_RUNTIME_DIR``)."""
    path = tmp_path / "run"
    monkeypatch.setenv("USDTKIT_RUNTIME_DIR", str(path))
    return path


@pytest.fixture
def footprint(runtime_dir: Path) -> Callable[[], Tuple[int, int, List[str]]]:
    """``footprint()``: this process's open fds, its mappings and the files in the runtime folder."""

    def measure() -> Tuple[int, int, List[str]]:
        files = sorted(os.listdir(runtime_dir)) if runtime_dir.exists() else []
        return len(os.listdir("/proc/self/fd")), len(Path("/proc/self/maps").read_text().splitlines()), files

    return measure


@pytest.fixture
def binary(build_c: Callable[..., str], tmp_path: Path) -> str:
    """A private copy of a real program with USDT probes and a ``.symtab``, which a test may rewrite."""
    path = tmp_path / "target"
    shutil.copy(build_c("keys.c"), path)
    return str(path)
