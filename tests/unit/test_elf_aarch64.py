"""aarch64 argument specs from a real aarch64 ELF built here with the cross compiler and sys/sdt.h."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from usdtkit.elf import read_usdt_probes
from usdtkit.elf.argspec import format_arg
from usdtkit.elf.image import ElfImage
from usdtkit.elf.model import Constant, Memory, RegisterValue, Unsupported


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
from readelf_text import readelf_notes  # noqa: E402

SOURCE = r"""
#include <sys/sdt.h>
struct s { long a, b, c; };
static volatile long counter = 7;
__attribute__((noinline)) long work(struct s *p, int x, long long *arr, int i, unsigned char c, short sh) {
    DTRACE_PROBE6(demo, six, p->b, x, arr[i], c, sh, 5);
    DTRACE_PROBE2(demo, consts, -4, counter);
    long local[4] = {x, x + 1, x + 2, x + 3};
    DTRACE_PROBE3(demo, stack, local[2], p->c, arr[3]);
    return p->a + x + local[1];
}
int main(int argc, char **argv) {
    struct s v = {1, 2, 3};
    long long arr[8] = {0};
    (void)argv;
    DTRACE_PROBE1(demo, six, argc);
    return (int)work(&v, argc, arr, argc, (unsigned char)argc, (short)argc);
}
"""


def _sdt_include(tmp_path) -> str:
    found = glob.glob("/usr/include/sys/sdt.h") + glob.glob("/usr/include/*/sys/sdt.h")
    if not found:
        pytest.skip("sys/sdt.h is not installed (systemtap-sdt-dev)")
    inc = tmp_path / "include" / "sys"
    inc.mkdir(parents=True)
    for header in glob.glob(os.path.join(os.path.dirname(found[0]), "sdt*.h")):
        shutil.copy(header, inc)
    return str(inc.parent)


@pytest.fixture(scope="module", params=["-O0", "-O2"])
def aarch64_binary(request, tmp_path_factory):
    compiler = shutil.which("aarch64-linux-gnu-gcc")
    if compiler is None:
        pytest.skip("aarch64-linux-gnu-gcc is not installed")
    tmp_path = tmp_path_factory.mktemp("a64")
    src = tmp_path / "demo.c"
    src.write_text(SOURCE)
    out = tmp_path / f"demo{request.param}"
    subprocess.run([compiler, request.param, "-I", _sdt_include(tmp_path), "-o", str(out), str(src)], check=True)
    return str(out)


def test_it_is_an_aarch64_elf(aarch64_binary):
    with ElfImage(aarch64_binary) as image:
        assert (image.arch, image.elfclass, image.little_endian) == ("aarch64", 64, True)


def test_notes_equal_readelf(aarch64_binary):
    expected = readelf_notes(aarch64_binary)
    got = [(p.provider, p.name, loc.address, loc.base, loc.semaphore, loc.arguments)
           for p in read_usdt_probes(aarch64_binary) for loc in p.locations]
    assert sorted(got) == sorted(expected)
    assert len(expected) == 4


def test_argument_specs(aarch64_binary):
    probes = {p.name: p for p in read_usdt_probes(aarch64_binary)}
    assert set(probes) == {"six", "consts", "stack"}
    assert len(probes["six"].locations) == 2  # two call sites, each with its own spec
    kinds = set()
    for probe in probes.values():
        for loc in probe.locations:
            for arg in loc.args:
                assert arg.arch == "aarch64"
                kinds.add(type(arg.location))
                if isinstance(arg.location, Unsupported):
                    # Only the symbolic page-offset form of a global (`[x3, #:lo12:.LANCHOR0]`) is unreadable.
                    assert ":lo12:" in arg.raw
                else:
                    assert format_arg(arg) == arg.raw
                if isinstance(arg.location, RegisterValue):
                    reg = arg.location.register
                    assert reg.name.startswith("x") and reg.bits == (32 if reg.spelled.startswith("w") else 64)
    first_six = probes["six"].locations[0].args  # note order: work() before main()
    assert [a.size for a in first_six] == [8, 4, 8, 1, 2, 4]
    assert [a.signed for a in first_six] == [True, True, True, False, True, True]
    assert first_six[5].location == Constant(5)
    assert probes["consts"].locations[0].args[0].location == Constant(-4)
    assert {RegisterValue, Constant} <= kinds
    assert Memory in kinds  # [sp, N] at -O0, [xN, N] at -O2


def test_offsets_of_pie_sites(aarch64_binary):
    with ElfImage(aarch64_binary) as image:
        text = image.section(".text")
    for probe in read_usdt_probes(aarch64_binary):
        for loc in probe.locations:
            assert text.addr <= loc.pc < text.addr + text.size
            assert loc.file_offset == loc.pc - text.addr + text.offset
