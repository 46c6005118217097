"""The function-table cache: hit, miss, stale file, corrupted or untrusted entry, new usdtkit version."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import usdtkit
from usdtkit.elf import index_cache
from usdtkit.elf.image import ElfImage
from usdtkit.elf.symbols import function_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``XDG_CACHE_HOME``: the entries live in its ``usdtkit/index``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """Records every time the symbols are decoded from the file (a cache miss)."""
    calls: List[str] = []
    real = index_cache.function_table

    def counted(image: ElfImage):
        calls.append(image.path)
        return real(image)

    monkeypatch.setattr(index_cache, "function_table", counted)
    return calls


def listed(path: str):
    with ElfImage(path) as image:
        return index_cache.cached_function_table(image).rows()


def entries(cache_home: Path) -> List[Path]:
    folder = cache_home / "usdtkit" / "index"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_miss_then_hit_gives_the_decoded_table(cache_home: Path, binary: str, decodes: List[str]) -> None:
    with ElfImage(binary) as image:
        expected = function_table(image).rows()
    assert expected
    assert listed(binary) == expected
    assert decodes == [binary]
    [entry] = entries(cache_home)
    assert entry.stat().st_mode & 0o777 == 0o600
    assert entry.parent.stat().st_mode & 0o777 == 0o700
    assert listed(binary) == expected
    assert decodes == [binary]  # second listing: loaded, not decoded


def test_changed_file_is_a_miss(cache_home: Path, binary: str, decodes: List[str]) -> None:
    before = listed(binary)
    st = os.stat(binary)
    with open(binary, "ab") as f:  # one byte appended: a new size
        f.write(b"\0")
    assert listed(binary) == before
    assert len(decodes) == 2
    os.truncate(binary, st.st_size)
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only ctime tells
    assert listed(binary) == before
    assert len(decodes) == 3
    assert len(entries(cache_home)) == 1  # the entries of the file's older versions are removed


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_corrupted_entry_is_a_miss_and_replaced(cache_home: Path, binary: str, decodes: List[str],
                                                damage: str) -> None:
    expected = listed(binary)
    [entry] = entries(cache_home)
    data = bytearray(entry.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) - 7]
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"\x7fELF" + os.urandom(4096))
    entry.write_bytes(bytes(data))
    assert listed(binary) == expected
    assert len(decodes) == 2
    assert listed(binary) == expected  # the rebuilt entry is used
    assert len(decodes) == 2


@pytest.mark.parametrize("change", ["other uid", "group writable", "world readable", "symlink"])
def test_untrusted_entry_is_ignored(cache_home: Path, binary: str, decodes: List[str], tmp_path: Path,
                                    change: str) -> None:
    expected = listed(binary)
    [entry] = entries(cache_home)
    if change == "other uid":
        if os.geteuid() != 0:
            pytest.skip("chown to another uid needs root")
        os.chown(entry, 65534, 65534)
    elif change == "group writable":
        entry.chmod(0o620)
    elif change == "world readable":
        entry.chmod(0o604)
    else:
        elsewhere = tmp_path / "elsewhere"
        entry.rename(elsewhere)
        entry.symlink_to(elsewhere)
    assert listed(binary) == expected
    assert len(decodes) == 2
    [entry] = entries(cache_home)  # replaced by a trusted one
    assert not entry.is_symlink() and entry.stat().st_uid == os.geteuid()
    assert entry.stat().st_mode & 0o777 == 0o600


def test_new_usdtkit_version_is_a_miss(cache_home: Path, binary: str, decodes: List[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    listed(binary)
    monkeypatch.setattr(usdtkit, "__version__", usdtkit.__version__ + ".post1")
    listed(binary)
    assert len(decodes) == 2
    assert len(entries(cache_home)) == 1  # the other version's entry is garbage: removed


def test_cli_listing_is_the_same_cold_and_warm(cache_home: Path, binary: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(cache_home))
    runs = [subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "list", "--json", *args],
                           capture_output=True, text=True, env=env, timeout=120)
            for args in ([binary], [binary], [binary, "main*"], ["--functions", binary, "*"])]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert len(entries(cache_home)) == 4  # one function table, one listing per distinct command line
    assert runs[0].stdout == runs[1].stdout
    functions = json.loads(runs[0].stdout)["functions"]
    assert json.loads(runs[2].stdout)["functions"] == [f for f in functions if f["name"].startswith("main")]
    assert json.loads(runs[3].stdout)["functions"] == functions
