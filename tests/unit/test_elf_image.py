"""The ELF header reader against pyelftools as an oracle, and its errors on bad files."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
import elfbuild  # noqa: E402

from usdtkit.elf import read_functions, read_usdt_probes  # noqa: E402
from usdtkit.elf.image import ElfImage  # noqa: E402
from usdtkit.errors import ElfError  # noqa: E402

REAL = [
    "/usr/bin/python3.11",
    "/usr/lib/postgresql/15/bin/postgres",
    "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so",
    "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
    "/lib/x86_64-linux-gnu/libc.so.6",
]


def _oracle(path: str):
    elffile = pytest.importorskip("elftools.elf.elffile")
    with open(path, "rb") as f:
        elf = elffile.ELFFile(f)
        sections = [
            (s.name, s["sh_type"], s["sh_flags"], s["sh_addr"], s["sh_offset"], s["sh_size"], s["sh_link"],
             s["sh_info"], s["sh_addralign"], s["sh_entsize"])
            for s in elf.iter_sections()
        ]
        segments = [
            (s["p_type"], s["p_flags"], s["p_offset"], s["p_vaddr"], s["p_filesz"], s["p_memsz"], s["p_align"])
            for s in elf.iter_segments()
        ]
        return elf.elfclass, elf.little_endian, elf["e_machine"], elf["e_type"], sections, segments


def _ours(path: str):
    with ElfImage(path) as image:
        return (image.elfclass, image.little_endian, image.machine, image.type,
                [tuple(s)[1:] for s in image.sections], [tuple(s) for s in image.segments])


def _num(value):
    """pyelftools names enum values (``SHT_PROGBITS``); turn them back into numbers."""
    if not isinstance(value, str):
        return value
    enums = pytest.importorskip("elftools.elf.enums")
    for name in dir(enums):
        if name.startswith(("ENUM_SH_TYPE", "ENUM_P_TYPE", "ENUM_E_MACHINE", "ENUM_E_TYPE")):
            table = getattr(enums, name)
            if value in table:
                return table[value]
    raise KeyError(value)


@pytest.mark.parametrize("path", REAL)
def test_headers_equal_pyelftools(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed")
    cls, little, machine, etype, sections, segments = _oracle(path)
    ours = _ours(path)
    assert ours[:4] == (cls, little, _num(machine), _num(etype))
    assert ours[4] == [(s[0], _num(s[1])) + s[2:] for s in sections]
    assert ours[5] == [(_num(s[0]),) + s[1:] for s in segments]


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_synthetic_headers_equal_pyelftools(tmp_path, bits, endian):
    path = tmp_path / "syn"
    path.write_bytes(elfbuild.probe_elf(bits, endian, machine=elfbuild.EM_PPC64,
                                        symbols=[("f", 0x1000, 4, 0x12, 1)]))
    cls, little, _machine, _etype, sections, segments = _oracle(str(path))
    ours = _ours(str(path))
    assert ours[:3] == (cls, little, 21)
    assert ours[4] == [(s[0], _num(s[1])) + s[2:] for s in sections]
    assert ours[5] == [(_num(s[0]),) + s[1:] for s in segments]
    with ElfImage(str(path)) as image:
        assert image.arch == "ppc64"


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_extended_section_numbering_equals_pyelftools(tmp_path, bits, endian):
    """e_shnum 0 and e_shstrndx SHN_XINDEX: the real values are section 0's sh_size and sh_link."""
    import struct

    data = bytearray(elfbuild.probe_elf(bits, endian, symbols=[("f", 0x1000, 4, 0x12, 1)]))
    word, shoff_at, counts_at, size_at, link_at = (("Q", 40, 60, 32, 40) if bits == 64 else ("I", 32, 48, 20, 24))
    (shoff,) = struct.unpack_from(endian + word, data, shoff_at)
    shnum, shstrndx = struct.unpack_from(endian + "HH", data, counts_at)
    struct.pack_into(endian + word, data, shoff + size_at, shnum)
    struct.pack_into(endian + "I", data, shoff + link_at, shstrndx)
    struct.pack_into(endian + "HH", data, counts_at, 0, 0xFFFF)
    path = tmp_path / "extended"
    path.write_bytes(bytes(data))
    _cls, _little, _machine, _etype, sections, _segments = _oracle(str(path))
    ours = _ours(str(path))
    assert len(ours[4]) == shnum > 2
    assert ours[4] == [(s[0], _num(s[1])) + s[2:] for s in sections]
    assert any(name == ".symtab" for name, *_ in ours[4])


def test_build_id_matches_readelf():
    path = "/usr/bin/python3.11"
    if not os.path.exists(path) or shutil.which("readelf") is None:
        pytest.skip("python3.11 or readelf missing")
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True).stdout
    expected = next(line.split()[-1] for line in out.splitlines() if "Build ID" in line)
    with ElfImage(path) as image:
        assert image.build_id() == expected


# --------------------------------------------------------------------------- errors
def _error(path) -> str:
    with pytest.raises(ElfError) as err:
        read_usdt_probes(str(path))
    with pytest.raises(ElfError):
        read_functions(str(path))
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    return message


def test_not_an_elf(tmp_path):
    path = tmp_path / "text"
    path.write_text("hello, world\n")
    assert "not an ELF file" in _error(path)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert "not an ELF file" in _error(empty)


def test_truncated(tmp_path):
    src = Path("/usr/lib/x86_64-linux-gnu/libstdc++.so.6")
    if not src.exists():
        pytest.skip("libstdc++ missing")
    data = src.read_bytes()
    for size in (10, 40, 63, 64, 4096, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{size}"
        path.write_bytes(data[:size])
        message = _error(path)
        assert any(w in message for w in ("truncated", "outside the file")), message


def test_directory_missing_and_special_files(tmp_path):
    assert "is a directory" in _error(tmp_path)
    assert "no such file" in _error(tmp_path / "missing")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in _error(fifo)  # and does not hang opening it
    assert "not a regular file" in _error("/dev/zero")


def test_permission_denied(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads everything; the CLI test covers this with setpriv")
    path = tmp_path / "secret"
    path.write_bytes(b"\x7fELF")
    path.chmod(0)
    assert "permission denied" in _error(path)


def test_unknown_class_and_byte_order(tmp_path):
    good = elfbuild.probe_elf()
    for index, value, reason in ((4, 7, "class"), (5, 9, "byte order")):
        bad = bytearray(good)
        bad[index] = value
        path = tmp_path / f"bad{index}"
        path.write_bytes(bytes(bad))
        assert reason in _error(path)
