"""The compiled-object cache stays bounded: entries unused for long and the least recently used beyond
its size go when an entry is written, a hit marks its entry used, and files that are not this user's
regular files are left alone."""
from __future__ import annotations

import os
import time

from usdtkit.bpf import objcache

OBJ = objcache.CompiledObject("GPL", 0, (objcache.Table("counts", 1, 8, 8, 16, 0),),
                              {"f": objcache.Function("f", b"\x95" + b"\0" * 7, ())})


def folder_of(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = objcache._folder()
    assert folder is not None and folder.startswith(str(tmp_path))
    return folder


def test_writing_an_entry_removes_old_and_excess_ones(tmp_path, monkeypatch):
    folder = folder_of(tmp_path, monkeypatch)
    now = time.time()
    for name, age, size in (("ancient", objcache.MAX_AGE + 60, 10), ("older", 300, 4000), ("newer", 100, 4000),
                            (".x.tmp", 2 * 3600, 1)):
        path = os.path.join(folder, name)
        with open(path, "wb") as handle:
            handle.write(b"\0" * size)
        os.chmod(path, 0o600)
        os.utime(path, (now - age, now - age))
    os.symlink("/etc/passwd", os.path.join(folder, "link"))  # not a regular file of ours: left alone
    monkeypatch.setattr(objcache, "MAX_BYTES", 6000)
    objcache.store("k" * 64, OBJ)
    left = sorted(os.listdir(folder))
    assert left == ["k" * 64, "link", "newer"], left  # older goes first (least recently used)
    assert objcache.load("k" * 64) == OBJ


def test_a_hit_marks_its_entry_used(tmp_path, monkeypatch):
    folder = folder_of(tmp_path, monkeypatch)
    objcache.store("k" * 64, OBJ)
    path = os.path.join(folder, "k" * 64)
    day_ago = time.time() - 86400
    os.utime(path, (day_ago, day_ago))
    assert objcache.load("k" * 64) == OBJ
    assert time.time() - os.stat(path).st_mtime < 60
