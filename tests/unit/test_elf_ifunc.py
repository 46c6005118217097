"""Indirect functions of the real libc: the list marks them, their implementations are named, and the
one a process calls is read from its memory (checked against what the dynamic loader's dlsym says)."""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from usdtkit.elf import find_symbol, process_objects
from usdtkit.elf.ifunc import find_ifunc, implementation_in
from usdtkit.elf.image import ElfImage
from usdtkit.elf.symbols import function_table

ROOT = Path(__file__).resolve().parents[2]
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


@pytest.fixture(scope="module")
def libc():
    if not os.path.exists(LIBC):
        pytest.skip(f"{LIBC} is not installed")
    with ElfImage(LIBC) as image:
        table = function_table(image)
        if not any(n.startswith("__strlen_") for n in table.names):
            pytest.skip("libc's local symbols are not installed (libc6-dbg)")
        yield image, table


def usdtkit_list(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "list", "--functions", *args],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_list_marks_ifuncs_in_text_and_json(libc):
    lines = usdtkit_list(LIBC, "str[lc]*").splitlines()
    assert next(x for x in lines if x.endswith(" strlen@GLIBC_2.2.5  (ifunc)"))
    assert not [x for x in lines if "strcoll" in x and "(ifunc)" in x]
    doc = json.loads(usdtkit_list("--json", LIBC, "strlen"))
    assert [f["ifunc"] for f in doc["functions"] if f["name"] == "strlen"] == [True]
    doc = json.loads(usdtkit_list("--json", LIBC, "malloc"))
    assert [f["ifunc"] for f in doc["functions"]] == [False]


def test_implementations_are_named_per_function(libc):
    image, table = libc
    strlen = find_ifunc(image, table, find_symbol(LIBC, "strlen").address, "strlen")
    assert {"__strlen_sse2", "__strlen_avx2"} <= set(strlen.candidates)
    assert all(c.startswith("__strlen_") for c in strlen.candidates) and strlen.slots
    memcpy = find_ifunc(image, table, find_symbol(LIBC, "memcpy").address, "memcpy")
    assert "__memcpy_sse2_unaligned" in memcpy.candidates
    assert not [c for c in memcpy.candidates if c.startswith("__memcpy_chk")]  # another IFUNC's
    index = find_ifunc(image, table, find_symbol(LIBC, "index").address, "index")
    assert index.name == "index" and "__strchr_sse2" in index.candidates  # an alias of strchr
    assert find_ifunc(image, table, find_symbol(LIBC, "malloc").address) is None


def test_the_implementation_this_process_calls_is_what_dlsym_returns(libc):
    image, table = libc
    strlen = find_ifunc(image, table, find_symbol(LIBC, "strlen").address, "strlen")
    (mapped,) = [o for o in process_objects(os.getpid()) if os.path.samefile(o.open_path, LIBC)]
    # dlsym of an IFUNC runs its resolver: the address of the implementation this process uses.
    resolved = ctypes.cast(ctypes.CDLL(LIBC).strlen, ctypes.c_void_p).value - mapped.load_bias
    used = implementation_in(os.getpid(), LIBC, image, strlen)
    assert used == resolved
    assert [n for n, a in zip(table.names, table.addresses) if a == used and n in strlen.candidates]
