"""The discovery cache shrinks: entries of gone or changed files, old and least recently used ones go."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable, List

import pytest

from usdtkit.elf import cache_store, index_cache
from usdtkit.elf.image import ElfImage

DAY = 24 * 3600


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "usdtkit" / "index"


@pytest.fixture
def copies(build_c: Callable[..., str], tmp_path: Path) -> List[str]:
    """Three private copies of a real program with a ``.symtab``."""
    paths = []
    for n in range(3):
        path = tmp_path / f"target{n}"
        shutil.copy(build_c("keys.c"), path)
        paths.append(str(path))
    return paths


def cache(path: str) -> None:
    """List ``path``'s functions through the cache (a miss writes an entry, then sweeps)."""
    with ElfImage(path) as image:
        assert len(index_cache.cached_function_table(image))


def names(folder: Path) -> List[str]:
    return sorted(os.listdir(folder))


def age(folder: Path, name: str, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(folder / name, (then, then))


def test_entries_of_removed_or_changed_files_go_at_the_next_write(folder: Path, copies: List[str]) -> None:
    cache(copies[0])
    [gone] = names(folder)
    cache(copies[1])
    [changed] = set(names(folder)) - {gone}
    os.unlink(copies[0])
    with open(copies[1], "ab") as f:  # rewritten in place: same path, same inode
        f.write(b"\0")
    cache(copies[2])
    assert len(names(folder)) == 1 and gone not in names(folder) and changed not in names(folder)


def test_entries_unused_for_max_age_go_and_a_hit_marks_its_entry_used(folder: Path, copies: List[str]) -> None:
    cache(copies[0])
    cache(copies[1])
    old, used = names(folder)[0], names(folder)[1]
    age(folder, old, cache_store.MAX_AGE / DAY + 1)
    age(folder, used, cache_store.MAX_AGE / DAY + 1)
    by_name = {n: p for p in copies[:2] for n in names(folder) if n.startswith(cache_store._tag(p))}
    cache(by_name[used])  # a hit: the entry is used again
    assert time.time() - (folder / used).stat().st_mtime < 60
    cache(copies[2])
    assert old not in names(folder) and used in names(folder) and len(names(folder)) == 2


def test_least_recently_used_entries_go_beyond_max_bytes(folder: Path, copies: List[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for n, path in enumerate(copies[:2]):
        cache(path)
    first, second = sorted(names(folder), key=lambda n: (folder / n).stat().st_mtime_ns)
    age(folder, first, 2)
    age(folder, second, 1)
    size = (folder / first).stat().st_size
    monkeypatch.setattr(cache_store, "MAX_BYTES", 2 * size + size // 2)  # room for two entries
    cache(copies[2])
    assert first not in names(folder) and second in names(folder) and len(names(folder)) == 2


def test_a_sweep_removes_damaged_entries_and_dead_temp_files_but_not_other_users_files(
        folder: Path, copies: List[str]) -> None:
    cache(copies[0])
    damaged, dead_temp, fresh_temp, foreign = (folder / n for n in ("0-0-0", ".x.tmp", ".y.tmp", "1-1-1"))
    for path in (damaged, dead_temp, fresh_temp, foreign):
        path.write_bytes(b"USDTKIT-FUNCTIONS\0 an entry of another format")
        path.chmod(0o600)
    age(folder, dead_temp.name, 1)
    if os.geteuid() == 0:
        os.chown(foreign, 65534, 65534)
    else:
        foreign.chmod(0o644)  # not trusted either way: not ours to judge
    removed = cache_store.sweep(str(folder))
    assert sorted(removed) == sorted([damaged.name, dead_temp.name])
    assert fresh_temp.exists() and foreign.exists()
