"""Shared fixtures: compiling the C test programs, starting and reaping target processes."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, List

import pytest

PROGRAMS = Path(__file__).parent / "integration" / "programs"


@pytest.fixture(scope="session")
def build_c(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """Compile ``tests/integration/programs/NAME`` with extra flags; returns the binary's path.

    Builds are cached per session by source and flags, so many tests can share one binary.
    """
    out_dir = tmp_path_factory.mktemp("programs")
    cache = {}

    def build(name: str, *flags: str, output: str = "") -> str:
        if shutil.which("gcc") is None:
            pytest.skip("gcc is not installed")
        source = PROGRAMS / name
        key = hashlib.sha256(source.read_bytes() + "\0".join(flags).encode()).hexdigest()[:12]
        if key not in cache:
            target = out_dir / (output or f"{source.stem}-{key}")
            cmd = ["gcc", "-g", *flags, "-o", str(target), str(source)]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            cache[key] = str(target)
        return cache[key]

    return build


@pytest.fixture
def processes() -> Callable[..., subprocess.Popen]:
    """Start target processes that are killed and reaped after the test, whatever happens."""
    started: List[subprocess.Popen] = []

    def start(argv: List[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.PIPE)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(argv, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream:
                stream.close()
