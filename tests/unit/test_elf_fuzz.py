"""Fuzzing discovery with mutated real binaries: the only exceptions allowed are usdtkit's own.

Each example takes a real or synthetic ELF file, applies a few mutations aimed at the structures the
reader trusts (ELF header, program and section header tables, ``.note.stapsdt``, symbol and string
tables, version sections, the xz MiniDebugInfo): bit flips, random bytes, absurd sizes and offsets,
truncation.  Then it runs everything ``usdtkit list`` runs.  Any exception that is not a
:class:`~usdtkit.errors.UsdtkitError` fails the test, and so does an example taking more than a few
seconds (a hang).

The CI budget is small; set ``USDTKIT_FUZZ_EXAMPLES`` (examples per test) for a long run.
"""
from __future__ import annotations

import lzma
import os
import signal
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
import elfbuild  # noqa: E402

from usdtkit.elf.argspec import format_args  # noqa: E402
from usdtkit.elf.image import ElfImage  # noqa: E402
from usdtkit.elf.notes import probes_from_image  # noqa: E402
from usdtkit.elf.symbols import function_table, read_functions  # noqa: E402
from usdtkit.elf.notes import read_usdt_probes  # noqa: E402
from usdtkit.errors import UsdtkitError  # noqa: E402

EXAMPLES = int(os.environ.get("USDTKIT_FUZZ_EXAMPLES", "40"))
HANG_SECONDS = 20

REAL = {
    "python3.11": "/usr/bin/python3.11",
    "postgres": "/usr/lib/postgresql/15/bin/postgres",
    "libstdc++": "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
}

_NOTES = [
    elfbuild.stapsdt_note(0x1010, 0x3000, 0x4002, "p", "a", "-4@%edi 8@-16(%rbp) 8@sym(%rip)"),
    elfbuild.stapsdt_note(0x1020, 0x3000, 0, "p", "b", "8@(,%rdx,8) 1@$5"),
]
_SYMBOLS = [("f", 0x1000, 16, 0x12, 1), ("g@@V2", 0x1010, 8, 0x12, 1), ("g@V1", 0x1010, 8, 0x12, 1),
            ("sym", 0x4000, 8, 0x11, 3)]


def _with_minidebuginfo() -> bytes:
    inner = elfbuild.probe_elf(symbols=_SYMBOLS)
    secs = [
        elfbuild.Sec(".text", elfbuild.SHT_PROGBITS, elfbuild.SHF_ALLOC | elfbuild.SHF_EXECINSTR, 0x1000,
                     b"\x90" * 0x100, 16),
        elfbuild.Sec(".gnu_debugdata", elfbuild.SHT_PROGBITS, 0, 0, lzma.compress(inner, format=lzma.FORMAT_XZ), 1),
    ]
    return elfbuild.Elf(64, "<", elfbuild.EM_X86_64, 3, secs, [elfbuild.Seg([".text"])]).build()


@lru_cache(maxsize=None)
def bases() -> Tuple[Tuple[str, bytes, Tuple[Tuple[int, int], ...]], ...]:
    """(name, bytes, interesting (start, end) regions) of every base file."""
    files = {name: Path(path).read_bytes() for name, path in REAL.items() if os.path.exists(path)}
    for bits in (32, 64):
        for endian in "<>":
            files[f"synthetic{bits}{endian}"] = elfbuild.probe_elf(
                bits, endian, notes=[elfbuild.stapsdt_note(0x1010, 0x3000, 0x4002, "p", "n", "8@%rax", bits, endian)],
                symbols=_SYMBOLS)
    files["synthetic-notes"] = elfbuild.probe_elf(notes=_NOTES, symbols=_SYMBOLS)
    files["minidebuginfo"] = _with_minidebuginfo()
    out = []
    for name, data in sorted(files.items()):
        out.append((name, data, tuple(_regions(data))))
    return tuple(out)


def _regions(data: bytes) -> List[Tuple[int, int]]:
    """Byte ranges worth mutating: headers, header tables and the sections discovery reads."""
    image = ElfImage.from_bytes(data, "base")
    regions = [(0, 64)]
    if image.segments:
        phoff = int.from_bytes(data[32:40] if image.elfclass == 64 else data[28:32],
                               "little" if image.little_endian else "big")
        regions.append((phoff, phoff + len(image.segments) * (56 if image.elfclass == 64 else 32)))
    shoff = int.from_bytes(data[40:48] if image.elfclass == 64 else data[32:36],
                           "little" if image.little_endian else "big")
    regions.append((shoff, shoff + len(image.sections) * (64 if image.elfclass == 64 else 40)))
    wanted = {".note.stapsdt", ".stapsdt.base", ".symtab", ".dynsym", ".strtab", ".dynstr", ".gnu.version",
              ".gnu.version_d", ".gnu.version_r", ".note.gnu.build-id", ".gnu_debugdata", ".shstrtab"}
    for sec in image.sections:
        if sec.name in wanted and sec.type != 8 and sec.size:
            # Big tables: their first 16 KiB is plenty to hit every field kind.
            regions.append((sec.offset, sec.offset + min(sec.size, 16384)))
    return [(a, min(b, len(data))) for a, b in regions if a < min(b, len(data))]


_ABSURD = [0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**63, 2**64 - 1]


@st.composite
def mutated(draw) -> Tuple[str, bytes]:
    name, data, regions = draw(st.sampled_from(bases()))
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        start, end = draw(st.sampled_from(regions))
        end = min(end, len(buf))
        if start >= end:
            continue
        offset = draw(st.integers(start, end - 1))
        kind = draw(st.sampled_from(["flip", "byte", "word", "word", "truncate"]))
        if kind == "flip":
            buf[offset] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            buf[offset] = draw(st.integers(0, 255))
        elif kind == "word":
            width = draw(st.sampled_from([2, 4, 8]))
            value = draw(st.one_of(st.sampled_from(_ABSURD + [len(buf), len(buf) + 1]),
                                   st.integers(0, 2 ** (8 * width) - 1)))
            value &= 2 ** (8 * width) - 1
            endian = draw(st.sampled_from(["little", "big"]))
            buf[offset:offset + width] = value.to_bytes(width, endian)[: max(0, len(buf) - offset)]
        else:
            cut = draw(st.one_of(st.just(offset), st.integers(0, len(buf))))
            del buf[cut:]
    return name, bytes(buf)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"example took more than {HANG_SECONDS} s")


def exercise_image(data: bytes) -> None:
    """Everything `usdtkit list` does with one object, in memory."""
    try:
        with ElfImage.from_bytes(data, "fuzzed") as image:
            for probe in probes_from_image(image):
                for loc in probe.locations:
                    format_args(loc.args)
                    assert loc.file_offset >= 0
            table = function_table(image, debug_roots=())
            table.rows()
            function_table(image, "f*", debug_roots=())
            image.build_id()
    except UsdtkitError as exc:
        assert "\n" not in str(exc)
        event(f"error: {type(exc).__name__}")
        return
    event("listed")


def _guarded(fn, *args) -> None:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    try:
        fn(*args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@given(mutated())
@_SETTINGS
def test_mutated_images_raise_only_usdtkit_errors(sample):
    name, data = sample
    event(f"base: {name}")
    _guarded(exercise_image, data)


def _exercise_file(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(prefix="usdtkit-fuzz-") as f:
        f.write(data)
        f.flush()
        for call in (lambda: read_usdt_probes(f.name), lambda: read_functions(f.name, debug_roots=())):
            try:
                call()
            except UsdtkitError as exc:
                assert f.name in str(exc) or "fuzz" in str(exc) or ".gnu_debugdata" in str(exc)


@given(mutated())
@settings(max_examples=max(EXAMPLES // 4, 5), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_mutated_files_raise_only_usdtkit_errors(sample):
    _name, data = sample
    _guarded(_exercise_file, data)


@given(st.binary(max_size=4096))
@settings(max_examples=EXAMPLES * 2, deadline=None, database=None)
def test_random_bytes(data):
    _guarded(exercise_image, b"\x7fELF" + data)
    _guarded(exercise_image, data)


@pytest.mark.parametrize("field, value", [("shoff", 2**63), ("shnum", 0xFFFF), ("phnum", 0xFFFE),
                                          ("shentsize", 1), ("shstrndx", 0xFFF0)])
def test_absurd_header_fields(field, value):
    data = bytearray(elfbuild.probe_elf(notes=_NOTES, symbols=_SYMBOLS))
    offsets = {"shoff": (40, 8), "phnum": (56, 2), "shentsize": (58, 2), "shnum": (60, 2), "shstrndx": (62, 2)}
    at, width = offsets[field]
    data[at:at + width] = value.to_bytes(width, "little")
    with pytest.raises(UsdtkitError):
        with ElfImage.from_bytes(bytes(data), "absurd") as image:
            probes_from_image(image)
            function_table(image, debug_roots=())
