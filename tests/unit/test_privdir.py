"""The private cache: folders only we could have made, files checked on their descriptor, atomic
publication.  Planted entries are real files and folders owned by another uid (65534) or writable by
others; the tests need root to make them."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from usdtkit import privdir
from usdtkit.errors import UnsafePath

OTHER = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's files needs root")


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """The usual cache root and the temp folder of the fallback, both inside ``tmp_path``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp_path / "xdg" / "usdtkit", tmp / f"usdtkit-{os.geteuid()}"


def plant(path, how):
    """Make ``path`` a folder that breaks the rules in one way."""
    if how == "symlink":
        elsewhere = path.parent / f"{path.name}-elsewhere"
        elsewhere.mkdir(parents=True)
        path.symlink_to(elsewhere)
        return elsewhere
    path.mkdir(parents=True)
    if how == "other-owner":
        os.chown(path, OTHER, OTHER)
    elif how == "group-writable":
        path.chmod(0o775)
    return path


def test_private_dir_is_made_0700_whatever_the_umask(roots):
    cache, _ = roots
    old = os.umask(0)
    try:
        made = privdir.private_dir("a", "b")
    finally:
        os.umask(old)
    assert made == str(cache / "a" / "b")
    for folder in (cache, cache / "a", cache / "a" / "b"):
        info = os.lstat(folder)
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
    assert privdir.private_dir("a", "b") == made  # found again, unchanged


@pytest.mark.parametrize("how, found", [("other-owner", "folder owned by uid 65534"),
                                        ("group-writable", "with mode 0775"), ("symlink", "a symlink")])
@pytest.mark.parametrize("where", ["root", "sub"])
def test_planted_folder_is_refused_with_its_owner_and_mode(roots, how, found, where):
    cache, _ = roots
    bad = cache if where == "root" else cache / "sub"
    if where == "sub":
        privdir.private_dir()
    plant(bad, how)
    with pytest.raises(UnsafePath) as info:
        privdir.private_dir("sub", "inner", root=str(cache))
    message = str(info.value)
    assert str(bad) in message and found in message and "\n" not in message


@pytest.mark.parametrize("how", ["other-owner", "group-writable", "symlink"])
def test_planted_cache_falls_back_to_a_private_temp_folder(roots, how):
    cache, fallback = roots
    planted = plant(cache, how)
    made = privdir.private_dir("demo")
    assert made == str(fallback / "demo")
    assert os.listdir(planted) == []  # nothing was made in the planted folder
    assert stat.S_IMODE(os.lstat(fallback).st_mode) == 0o700


def test_another_users_home_is_not_used(roots, tmp_path, monkeypatch):
    # sudo -E: HOME and XDG_CACHE_HOME still name the invoking user's folders.
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    os.chown(home, OTHER, OTHER)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    assert privdir.private_dir("demo") == str(roots[1] / "demo")
    assert os.listdir(home / ".cache") == []


def test_unwritable_home_falls_back(roots, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "/dev/null/cache")
    assert privdir.private_dir("x") == str(roots[1] / "x")


def test_sticky_ancestor_is_fine_a_world_writable_one_is_not(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    assert privdir.private_dir("x", root=str(shared / "c")) == str(shared / "c" / "x")
    shared.chmod(0o777)
    with pytest.raises(UnsafePath, match="mode 0777"):
        privdir.private_dir("x", root=str(shared / "c"))


def test_planted_fallback_is_refused_with_both_reasons(roots):
    cache, fallback = roots
    plant(cache, "other-owner")
    plant(fallback, "other-owner")
    with pytest.raises(UnsafePath) as info:
        privdir.private_dir("demo")
    assert str(cache) in str(info.value) and str(fallback) in str(info.value)


def test_part_names_must_be_plain():
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError):
            privdir.private_dir(bad)


@pytest.fixture
def cache_file(roots):
    folder = privdir.private_dir("bin")
    path = os.path.join(folder, "tool")
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\n")
    os.chmod(path, 0o755)
    return path


def test_trusted_file_is_checked_on_its_descriptor(cache_file):
    info = privdir.check_trusted(cache_file)
    assert (info.st_dev, info.st_ino) == (os.stat(cache_file).st_dev, os.stat(cache_file).st_ino)


@pytest.mark.parametrize("how, found", [("other-owner", "owned by uid 65534"), ("group-writable", "mode 0775"),
                                        ("other-writable", "mode 0757"), ("symlink", "a symlink"),
                                        ("folder-writable", "a folder owned by uid 0 with mode 0770")])
def test_untrusted_file_is_refused(cache_file, how, found):
    if how == "other-owner":
        os.chown(cache_file, OTHER, OTHER)
    elif how == "group-writable":
        os.chmod(cache_file, 0o775)
    elif how == "other-writable":
        os.chmod(cache_file, 0o757)
    elif how == "symlink":
        os.rename(cache_file, cache_file + ".real")
        os.symlink(cache_file + ".real", cache_file)
    else:
        os.chmod(os.path.dirname(cache_file), 0o770)
    with pytest.raises(UnsafePath, match=found):
        privdir.check_trusted(cache_file)


def test_missing_file_is_not_found(roots):
    with pytest.raises(FileNotFoundError):
        privdir.check_trusted(os.path.join(privdir.private_dir("bin"), "absent"))


def copy_of(program, folder, name):
    with open(shutil.which(program), "rb") as source:
        data = source.read()
    return privdir.publish(folder, name, lambda fd: os.write(fd, data), mode=0o755)


def test_checked_file_runs_even_when_its_path_is_swapped(roots, tmp_path):
    folder = privdir.private_dir("bin")
    path = copy_of("sleep", folder, "napper")
    fd = privdir.open_trusted(path)
    marker = tmp_path / "marker"
    os.rename(path, path + ".old")  # what a swap after the check would do
    with open(path, "w") as swapped:
        swapped.write(f"#!/bin/sh\ntouch {marker}\n")
    os.chmod(path, 0o755)
    try:
        child = subprocess.Popen(privdir.fd_exec_argv(fd, [path, "5"]), pass_fds=(fd,))
    finally:
        os.close(fd)
    try:
        def looks() -> tuple:
            return (os.readlink(f"/proc/{child.pid}/exe"), open(f"/proc/{child.pid}/comm").read().strip(),
                    open(f"/proc/{child.pid}/cmdline").read().split("\0")[0],
                    sorted(os.listdir(f"/proc/{child.pid}/fd")))

        # the checked inode (now renamed), named after its file, without the descriptor (the exec
        # closes it a moment after switching the executable, so wait for the whole picture)
        expected = (path + ".old", "napper.old", path, ["0", "1", "2"])
        deadline = time.monotonic() + 5
        seen = looks()
        while seen != expected and time.monotonic() < deadline:
            time.sleep(0.01)
            seen = looks()  # sleep opens locale files as it starts: compare one reading, not two
        assert seen == expected
    finally:
        child.kill()
        child.wait()
    assert not marker.exists()


def test_publish_is_atomic_and_replaces_a_planted_symlink(roots, tmp_path):
    folder = privdir.private_dir("out")
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    os.symlink(victim, os.path.join(folder, "result"))
    path = privdir.publish(folder, "result", lambda fd: os.write(fd, b"new\n"), mode=0o640)
    assert path == os.path.join(folder, "result")
    assert victim.read_text() == "untouched\n"
    info = os.lstat(path)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o640
    assert open(path).read() == "new\n"
    assert os.listdir(folder) == ["result"]  # no temp file left


def test_failed_write_leaves_nothing_behind(roots):
    folder = privdir.private_dir("out")

    def failing(fd):
        os.write(fd, b"half")
        raise RuntimeError("compiler died")

    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError):
        privdir.publish(folder, "result", failing)
    assert os.listdir(folder) == [] and len(os.listdir("/proc/self/fd")) == fds


def test_publish_refuses_a_folder_others_can_write(tmp_path):
    tmp_path.joinpath("open").mkdir()
    tmp_path.joinpath("open").chmod(0o777)
    with pytest.raises(UnsafePath, match="mode 0777"):
        privdir.publish(str(tmp_path / "open"), "x", lambda fd: None)
