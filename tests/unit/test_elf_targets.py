"""Targets: library names resolved like the dynamic loader, paths, and their errors."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
import elfbuild  # noqa: E402

from usdtkit.elf import resolve_library, resolve_target  # noqa: E402
from usdtkit.elf import targets  # noqa: E402
from usdtkit.errors import TargetError  # noqa: E402


def ldconfig_path(soname: str) -> str:
    exe = shutil.which("ldconfig") or "/sbin/ldconfig"
    if not os.path.exists(exe):
        pytest.skip("ldconfig is not installed")
    out = subprocess.run([exe, "-p"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        if m and m[1] == soname and (os.uname().machine != "x86_64" or "x86-64" in m[2]):
            return m[3]
    pytest.skip(f"{soname} is not in the loader cache")


@pytest.mark.parametrize("name", ["c", "libc", "libc.so.6"])
def test_libc(name, monkeypatch):
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    assert resolve_library(name) == ldconfig_path("libc.so.6")


@pytest.mark.parametrize("name", ["libstdc++", "stdc++", "libstdc++.so.6"])
def test_libstdcxx(name, monkeypatch):
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    assert resolve_library(name) == ldconfig_path("libstdc++.so.6")


def test_libpython_with_so_suffix(monkeypatch):
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    path = resolve_library("libpython3.11.so")
    assert os.path.basename(path).startswith("libpython3.11.so")
    assert os.path.realpath(path) == os.path.realpath(ldconfig_path("libpython3.11.so.1.0"))


def test_ld_library_path_comes_first_and_foreign_or_non_elf_files_are_skipped(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    # In `first`: a linker script and an aarch64 object named like the library: neither qualifies.
    (first / "libdemo.so").write_text("INPUT(-ldemo_real)\n")
    (first / "libdemo.so.1").write_bytes(elfbuild.probe_elf(machine=elfbuild.EM_AARCH64))
    native = second / "libdemo.so.1"
    shutil.copy(ldconfig_path("libc.so.6"), native)
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{first}:{second}")
    assert resolve_library("demo") == str(native)
    assert resolve_library("libdemo") == str(native)
    assert resolve_target("demo") == str(native)


def test_highest_version_of_same_length_wins(tmp_path, monkeypatch):
    libc = ldconfig_path("libc.so.6")
    for suffix in ("so.1", "so.2", "so.2.1"):
        shutil.copy(libc, tmp_path / f"libver.{suffix}")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    assert resolve_library("ver") == str(tmp_path / "libver.so.2")


def test_unknown_library(monkeypatch):
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    with pytest.raises(TargetError, match=r"^no_such_lib_xyz: library not found"):
        resolve_library("no_such_lib_xyz")
    with pytest.raises(TargetError):
        resolve_target("no_such_lib_xyz")


@pytest.mark.parametrize("bad", ["", "a/b", "x\0y"])
def test_bad_library_names(bad):
    with pytest.raises(TargetError):
        resolve_library(bad)


def test_paths(tmp_path, monkeypatch):
    exe = tmp_path / "prog"
    exe.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert resolve_target("prog") == str(exe)  # an existing file wins over a library name
    assert resolve_target("./prog") == str(exe)
    assert resolve_target(str(exe)) == str(exe)
    with pytest.raises(TargetError, match="missing/prog: no such file"):
        resolve_target("missing/prog")
    with pytest.raises(TargetError):
        resolve_target("")


def test_without_ldconfig_the_default_directories_are_searched(monkeypatch):
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    expected = ldconfig_path("libc.so.6")
    monkeypatch.setattr(targets, "_ldconfig_cache", lambda: ())
    assert os.path.realpath(resolve_library("c")) == os.path.realpath(expected)
