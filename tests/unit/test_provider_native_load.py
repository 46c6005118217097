"""A missing, broken or foreign native library: ``import usdtkit`` and ``import usdtkit.provider``
still work (discovery and the CLI do not need the library), and the first use of the provider API
raises a one-line :class:`ProviderError` naming the library, what is wrong and how to fix it.

Each case runs a copy of the package whose ``_native/libstapsdt.so`` was damaged for real."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE_USE = """
    import usdtkit
    import usdtkit.provider as provider
    from usdtkit.errors import ProviderError
    print("imported", usdtkit.__file__)
    uses = {
        "Provider": lambda: provider.Provider("app"),
        "uint8": lambda: provider.uint8,
        "from-import": lambda: exec("from usdtkit.provider import Provider, uint16"),
    }
    for name, use in uses.items():
        try:
            use()
            print(name, "worked")
        except ProviderError as exc:
            print(name, "ProviderError", exc)
        except BaseException as exc:
            print(name, "other", type(exc).__name__, exc)
"""


def package_copy(tmp_path: Path) -> Path:
    """A copy of the usdtkit package (with its built libraries) importable from ``tmp_path``."""
    shutil.copytree(ROOT / "usdtkit", tmp_path / "usdtkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "usdtkit" / "_native" / "libstapsdt.so"


def run_copy(tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(PROBE_USE)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)


def assert_reported(result: subprocess.CompletedProcess, tmp_path: Path, *fragments: str) -> None:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"imported {tmp_path / 'usdtkit' / '__init__.py'}", result.stdout
    reports = dict(line.split(" ", 1) for line in lines[1:])
    assert set(reports) == {"Provider", "uint8", "from-import"}, result.stdout
    for use, report in reports.items():
        assert report.startswith("ProviderError "), (use, report)
        message = report[len("ProviderError "):]
        assert str(tmp_path / "usdtkit" / "_native" / "libstapsdt.so") in message, message
        assert "pip install -e ." in message, message  # how to fix it
        for fragment in fragments:
            assert fragment in message, (fragment, message)


def test_missing_library_is_reported_when_the_provider_is_used(tmp_path):
    package_copy(tmp_path).unlink()
    assert_reported(run_copy(tmp_path), tmp_path, "is missing")


def test_broken_library_is_reported_when_the_provider_is_used(tmp_path):
    package_copy(tmp_path).write_bytes(b"not an ELF object\n")
    assert_reported(run_copy(tmp_path), tmp_path, "cannot be loaded", "file too short")


def test_foreign_library_is_reported_when_the_provider_is_used(tmp_path):
    """A ``libstapsdt.so`` that loads but is not usdtkit's build (no probeSemaphore extension)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build a foreign library")
    library = package_copy(tmp_path)
    source = tmp_path / "foreign.c"
    source.write_text("void *providerInit(const char *name) { (void)name; return 0; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libstapsdt.so", "-o", str(library),
                    str(source)], check=True, capture_output=True)
    assert_reported(run_copy(tmp_path), tmp_path, "not usdtkit's build", "providerAddProbe")
