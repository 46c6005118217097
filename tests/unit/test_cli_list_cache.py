"""A warm `usdtkit list` prints from the listing cache, byte for byte what a cold one prints."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from usdtkit.elf import cache_store

ROOT = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3.11"
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def run_list(cache: Path, *args: str, code: str = "") -> subprocess.CompletedProcess:
    """``usdtkit list ARGS`` in a new process with the cache in ``cache`` (``code`` runs after it)."""
    script = f"import sys; from usdtkit.cli.main import main; rc = main(sys.argv[1:]); {code or 'pass'}; sys.exit(rc)"
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(cache))
    out = subprocess.run([sys.executable, "-c", script, "list", *args], capture_output=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def cold_and_warm(tmp_path: Path, *args: str) -> List[bytes]:
    """The output of a listing with an empty cache, then twice with the one that run filled."""
    cache = tmp_path / f"cache{len(list(tmp_path.iterdir()))}"
    return [run_list(cache, *args).stdout for _ in range(3)]


@pytest.fixture
def process() -> Iterator[subprocess.Popen]:
    if not os.path.exists(PYTHON):
        pytest.skip(f"{PYTHON} is not installed")
    proc = subprocess.Popen([PYTHON, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("args", [["--json"], [], ["--usdt"], ["--functions", "--json", "TARGET", "*main*"],
                                  ["--json", "--usdt", "TARGET", "x*"]])
def test_a_file_listing_is_the_same_cold_and_warm(tmp_path: Path, binary: str, args: List[str]) -> None:
    args = [binary if a == "TARGET" else a for a in args] + ([] if "TARGET" in args else [binary])
    cold, warm, again = cold_and_warm(tmp_path, *args)
    assert cold and cold == warm == again


@pytest.mark.parametrize("args", [["--json", LIBC], [PYTHON], ["--json", PYTHON, "_Py*"]])
def test_listings_with_a_debug_file_are_the_same_cold_and_warm(tmp_path: Path, args: List[str]) -> None:
    if not all(os.path.exists(a) for a in args if a.startswith("/")):
        pytest.skip("not installed")
    cold, warm, again = cold_and_warm(tmp_path, *args)
    assert cold and cold == warm == again


@pytest.mark.parametrize("args", [["--json"], [], ["--json", "--usdt", "python:*"]])
def test_a_process_listing_is_the_same_cold_and_warm(tmp_path: Path, process: subprocess.Popen,
                                                     args: List[str]) -> None:
    cold, warm, again = cold_and_warm(tmp_path, *args, "-p", str(process.pid))
    assert cold and cold == warm == again
    assert f'"pid": {process.pid}'.encode() in cold or f"pid {process.pid}".encode() in cold


def test_a_warm_listing_reads_no_elf_file(tmp_path: Path, binary: str) -> None:
    """A hit is a stat, a checked read and a write: the ELF reader is not even imported."""
    probe = ("print(sorted(m for m in sys.modules if m.startswith('usdtkit.elf.') "
             "and m != 'usdtkit.elf.cache_store'), file=sys.stderr)")
    cache = tmp_path / "cache"
    cold = run_list(cache, "--json", binary, code=probe)
    warm = run_list(cache, "--json", binary, code=probe)
    assert warm.stdout == cold.stdout
    assert "usdtkit.elf.image" in cold.stderr.decode()
    assert warm.stderr.decode().strip() in ("[]", "['usdtkit.elf.targets']")  # names resolved, no ELF read


def test_a_changed_file_is_listed_again(tmp_path: Path, binary: str, build_c: Callable[..., str]) -> None:
    cache = tmp_path / "cache"
    before = run_list(cache, "--json", binary).stdout
    shutil.copy(build_c("keys.c", "-O1"), binary)  # rewritten in place: same inode
    after = run_list(cache, "--json", binary).stdout
    assert after != before
    assert after == run_list(tmp_path / "fresh", "--json", binary).stdout


def test_an_entry_whose_dependency_changed_is_a_miss(tmp_path: Path) -> None:
    """A table read from a debug file records that file: once it changes, appears or goes, a miss."""
    folder = str(tmp_path / "index")
    os.mkdir(folder, 0o700)
    elf, debug, absent = tmp_path / "lib.so", tmp_path / "lib.debug", tmp_path / "other.debug"
    elf.write_bytes(b"lib")
    debug.write_bytes(b"symbols")
    status = cache_store.status_of(str(elf))
    deps = cache_store.snapshot([str(debug), str(absent)])
    cache_store.write(folder, str(elf), status, ("k",), [b"body"], deps=deps)
    assert bytes(cache_store.read(folder, str(elf), status, ("k",))) == b"body"
    absent.write_bytes(b"now installed")
    assert cache_store.read(folder, str(elf), status, ("k",)) is None
    absent.unlink()
    assert cache_store.read(folder, str(elf), status, ("k",)) is not None
    debug.write_bytes(b"new symbols")
    assert cache_store.read(folder, str(elf), status, ("k",)) is None
    assert cache_store.sweep(folder) and not os.listdir(folder)  # and the sweep drops it
