"""The demo service's build cache: a binary found there runs only if no one but us could have put it
there, and what runs is the very file that was checked.  Planted binaries are shell scripts that leave
a marker file if they ever run (planting another user's file needs root)."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from usdtkit import demo_services

OTHER = 65534

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's files needs root"),
              pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """usdtkit's usual cache root, and the temp folder of its fallback, inside ``tmp_path``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path / "xdg" / "usdtkit"


def binary_name() -> str:
    digest = hashlib.sha256((demo_services.demo_apps_dir() / "httpd.c").read_bytes()).hexdigest()[:16]
    return f"demo_httpd-{digest}"


def plant_script(path, marker) -> None:
    path.write_text(f"#!/bin/sh\ntouch {marker}\necho 'listening on 9'\nexec sleep 30\n")
    path.chmod(0o755)


def serves_requests() -> None:
    """Start the demo service the way `usdtkit demo` does, send one request, stop it; nothing stays open."""
    fds = len(os.listdir("/proc/self/fd"))
    service = demo_services.start_httpd()
    try:
        assert service.get("/") == 200
    finally:
        service.stop()
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.parametrize("how", ["other-owner", "group-writable", "symlink"])
def test_planted_binary_is_rebuilt_never_run(cache, tmp_path, how):
    marker = tmp_path / "planted-binary-ran"
    binary = cache / "demo" / binary_name()
    binary.parent.mkdir(parents=True, mode=0o700)
    if how == "symlink":
        plant_script(tmp_path / "elsewhere", marker)
        binary.symlink_to(tmp_path / "elsewhere")
    else:
        plant_script(binary, marker)
        if how == "other-owner":
            os.chown(binary, OTHER, OTHER)
        else:
            binary.chmod(0o775)
    serves_requests()
    assert not marker.exists()
    info = os.lstat(binary)  # rebuilt in place
    assert stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022
    if how == "symlink":
        assert (tmp_path / "elsewhere").read_text().startswith("#!/bin/sh")  # not written through the link


@pytest.mark.parametrize("how", ["other-owner", "symlink"])
def test_planted_demo_folder_is_not_used(cache, tmp_path, how):
    marker = tmp_path / "planted-binary-ran"
    planted = tmp_path / "planted"
    planted.mkdir()
    plant_script(planted / binary_name(), marker)
    cache.mkdir(parents=True, mode=0o700)
    if how == "symlink":
        (cache / "demo").symlink_to(planted)
    else:
        os.chown(planted, OTHER, OTHER)
        planted.rename(cache / "demo")
    assert demo_services.build_httpd() == str(tmp_path / "tmp" / f"usdtkit-{os.geteuid()}" / "demo" / binary_name())
    serves_requests()
    assert not marker.exists()


def test_what_runs_is_the_checked_file_even_if_swapped(cache, tmp_path, monkeypatch):
    binary = demo_services.build_httpd()
    marker = tmp_path / "swapped-in-binary-ran"
    real_popen = subprocess.Popen

    def swap_then_start(*args, **kwargs):
        # What a swap between the check and the start would leave at the path.
        os.rename(binary, binary + ".checked")
        plant_script(type(tmp_path)(binary), marker)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(demo_services.subprocess, "Popen", swap_then_start)
    serves_requests()
    assert not marker.exists()
