"""USDT notes: parity with readelf, tplist and bpftrace on real binaries; classes, byte orders, base."""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
import elfbuild  # noqa: E402
from readelf_text import readelf_notes  # noqa: E402

from usdtkit.elf import read_usdt_probes  # noqa: E402
from usdtkit.elf.image import ElfImage  # noqa: E402
from usdtkit.elf.model import SymbolRelative  # noqa: E402
from usdtkit.elf.notes import read_raw_notes  # noqa: E402
from usdtkit.errors import ElfError  # noqa: E402

REAL = [
    "/usr/bin/python3.11",
    "/usr/lib/postgresql/15/bin/postgres",
    "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so",
    "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
]

def real(path: str) -> str:
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed")
    return path


def section_and_segments(path):
    with ElfImage(path) as image:
        return image.section(".stapsdt.base"), image.loads


# --------------------------------------------------------------------------- real binaries
@pytest.mark.parametrize("path", REAL)
def test_every_note_equals_readelf(path):
    path = real(path)
    expected = readelf_notes(path)
    assert expected, "readelf found no stapsdt notes"
    with ElfImage(path) as image:
        raw = read_raw_notes(image)
    assert [(p, n, pc, b, s, a.rstrip()) for p, n, pc, b, s, a in raw] == expected

    probes = read_usdt_probes(path)
    flattened = [
        (p.provider, p.name, loc.address, loc.base, loc.semaphore, loc.arguments.rstrip())
        for p in probes for loc in p.locations
    ]
    assert Counter(flattened) == Counter(expected)
    # Call sites stay in note order within a probe.
    for probe in probes:
        order = [e for e in expected if (e[0], e[1]) == (probe.provider, probe.name)]
        assert [loc.address for loc in probe.locations] == [e[2] for e in order]
        assert probe.binary == path


@pytest.mark.parametrize("path", REAL)
def test_offsets_follow_the_load_segments(path):
    path = real(path)
    base_sec, loads = section_and_segments(path)
    for probe in read_usdt_probes(path):
        for loc in probe.locations:
            shift = base_sec.addr - loc.base if base_sec is not None and loc.base else 0
            assert loc.pc == loc.address + shift
            seg = next(s for s in loads if s.vaddr <= loc.pc < s.vaddr + s.filesz)
            assert loc.file_offset == loc.pc - seg.vaddr + seg.offset
            assert seg.flags & 1, "a probe site must be in an executable segment"
            if loc.semaphore:
                seg = next(s for s in loads if s.vaddr <= loc.semaphore_address < s.vaddr + s.memsz)
                assert loc.semaphore_offset == loc.semaphore_address - seg.vaddr + seg.offset
            else:
                assert loc.semaphore_offset is None and loc.semaphore_address == 0


def test_postgres_rip_relative_symbols_are_resolved():
    path = real("/usr/lib/postgresql/15/bin/postgres")
    dyn = subprocess.run(["readelf", "-Ws", "--dyn-syms", path], capture_output=True, text=True).stdout
    values = {}
    for line in dyn.splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[7] in ("NBuffers", "CheckpointStats"):
            values[parts[7]] = int(parts[1], 16)
    assert set(values) == {"NBuffers", "CheckpointStats"}
    done = next(p for p in read_usdt_probes(path) if p.name == "checkpoint__done")
    locs = [a.location for a in done.locations[0].args]
    assert done.locations[0].arguments.startswith("-4@40+CheckpointStats(%rip) -4@NBuffers(%rip)")
    assert locs[0] == SymbolRelative("CheckpointStats", 40, values["CheckpointStats"] + 40)
    assert locs[1] == SymbolRelative("NBuffers", 0, values["NBuffers"])


def _tplist(path: str):
    exe = shutil.which("tplist-bpfcc") or shutil.which("tplist")
    if exe is None:
        pytest.skip("tplist-bpfcc is not installed")
    probes = subprocess.run([exe, "-l", path], capture_output=True, text=True, timeout=120).stdout.splitlines()
    verbose = subprocess.run([exe, "-v", "-l", path], capture_output=True, text=True, timeout=120).stdout
    locations = sum(int(m) for m in re.findall(r"^\s+(\d+) location\(s\)", verbose, re.M))
    return len(probes), locations


@pytest.mark.parametrize("path", REAL)
def test_counts_equal_tplist(path):
    path = real(path)
    probes = read_usdt_probes(path)
    assert _tplist(path) == (len(probes), sum(len(p.locations) for p in probes))


@pytest.mark.parametrize("path", REAL)
def test_probe_count_equals_bpftrace(path, tmp_path):
    path = real(path)
    if shutil.which("bpftrace") is None:
        pytest.skip("bpftrace is not installed")
    if os.geteuid() != 0:
        pytest.skip("bpftrace -l needs root")
    listed = path
    if "+" in path:  # bpftrace 0.17's parser rejects '+' in paths: go through a symlink
        listed = str(tmp_path / os.path.basename(path).replace("+", "x"))
        os.symlink(path, listed)
    out = subprocess.run(["bpftrace", "-l", f"usdt:{listed}:*"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = {line.split(":", 2)[2] for line in out.stdout.splitlines() if line.startswith("usdt:")}
    assert names == {p.qualified_name for p in read_usdt_probes(path)}


# --------------------------------------------------------------------------- classes and byte orders
@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_both_classes_and_byte_orders(tmp_path, bits, endian):
    notes = [
        elfbuild.stapsdt_note(0x1010, 0x3000, 0x4002, "prov", "first", "-4@%edi 8@-16(%rbp)", bits, endian),
        elfbuild.stapsdt_note(0x1020, 0x3000, 0, "prov", "noargs", "", bits, endian),
        elfbuild.stapsdt_note(0x1030, 0x3000, 0x4002, "prov", "first", "-4@%esi 8@%rax", bits, endian),
    ]
    path = tmp_path / f"elf{bits}{endian}"
    path.write_bytes(elfbuild.probe_elf(bits, endian, notes=notes))
    expected = readelf_notes(str(path))
    with ElfImage(str(path)) as image:
        assert (image.elfclass, image.little_endian) == (bits, endian == "<")
        assert [n[:5] + (n[5].rstrip(),) for n in read_raw_notes(image)] == expected
    probes = read_usdt_probes(str(path))
    assert [p.qualified_name for p in probes] == ["prov:first", "prov:noargs"]
    first, noargs = probes
    assert [loc.pc for loc in first.locations] == [0x1010, 0x1030]
    assert [loc.file_offset for loc in first.locations] == [0x1010, 0x1030]  # .text at offset == vaddr
    assert first.semaphore == 0x4002 and first.semaphore_offset == 0x3002  # .probes: vaddr 0x4000 @ 0x3000
    assert [a.raw for a in first.locations[1].args] == ["-4@%esi", "8@%rax"]
    assert noargs.locations[0].args == () and noargs.semaphore_offset is None


def test_stapsdt_base_adjustment(tmp_path):
    # Written as if .stapsdt.base were at 0x2ff0; the file has it at 0x3000 (moved 0x10 by prelink).
    notes = [
        elfbuild.stapsdt_note(0x1010, 0x2FF0, 0x3FF2, "p", "moved", "8@%rdi"),
        elfbuild.stapsdt_note(0x1010, 0, 0x4002, "p", "base0", "8@%rdi"),  # base 0: no adjustment
    ]
    path = tmp_path / "prelinked"
    path.write_bytes(elfbuild.probe_elf(notes=notes))
    moved, base0 = read_usdt_probes(str(path))
    loc = moved.locations[0]
    assert (loc.address, loc.base, loc.semaphore) == (0x1010, 0x2FF0, 0x3FF2)  # raw note values
    assert (loc.pc, loc.file_offset) == (0x1020, 0x1020)
    assert (loc.semaphore_address, loc.semaphore_offset) == (0x4002, 0x3002)
    assert base0.locations[0].pc == 0x1010 and base0.locations[0].semaphore_address == 0x4002


def test_no_stapsdt_base_section_means_no_adjustment(tmp_path):
    path = tmp_path / "nobase"
    path.write_bytes(elfbuild.probe_elf(notes=[elfbuild.stapsdt_note(0x1010, 0x2FF0, 0, "p", "n", "")],
                                        stapsdt_base=None))
    assert read_usdt_probes(str(path))[0].locations[0].pc == 0x1010


def test_file_without_notes_has_no_probes():
    assert read_usdt_probes(real("/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true")) == []


def test_other_owners_in_the_section_are_ignored(tmp_path):
    notes = [elfbuild.note(b"GNU", 3, b"\x01\x02\x03\x04"), elfbuild.stapsdt_note(0x1010, 0x3000, 0, "p", "n", ""),
             elfbuild.note(b"stapsdt", 7, b"\0" * 30)]
    path = tmp_path / "mixed"
    path.write_bytes(elfbuild.probe_elf(notes=notes))
    assert [p.qualified_name for p in read_usdt_probes(str(path))] == ["p:n"]


# --------------------------------------------------------------------------- corrupt notes
def _with_notes(tmp_path, data: bytes) -> str:
    path = tmp_path / "corrupt"
    path.write_bytes(elfbuild.probe_elf(notes=[data]))
    return str(path)


@pytest.mark.parametrize(
    "blob, message",
    [
        (struct.pack("<III", 8, 0xFFFFFFF0, 3) + b"stapsdt\0", "beyond the section"),
        (struct.pack("<III", 0xFFFFFFFF, 4, 3) + b"stapsdt\0", "beyond the section"),
        (elfbuild.note(b"stapsdt", 3, b"\0" * 10), "too short"),
        (elfbuild.note(b"stapsdt", 3, struct.pack("<QQQ", 0x1010, 0, 0) + b"prov-without-nul"), "unterminated"),
        (elfbuild.note(b"stapsdt", 3, struct.pack("<QQQ", 0x1010, 0, 0) + b"p\0n\0args-without-nul"),
         "unterminated argument"),
        (elfbuild.stapsdt_note(0x99999, 0x3000, 0, "p", "n", ""), "outside every loadable segment"),
        (elfbuild.stapsdt_note(0x1010, 0x3000, 0x77777, "p", "n", ""), "semaphore"),
    ],
)
def test_corrupt_notes_raise_elf_error(tmp_path, blob, message):
    path = _with_notes(tmp_path, blob)
    with pytest.raises(ElfError) as err:
        read_usdt_probes(path)
    assert message in str(err.value) and path in str(err.value)
    assert "\n" not in str(err.value)
