"""Function symbols: parity with readelf -Ws, versions, debug files, MiniDebugInfo, demangling, globs."""
from __future__ import annotations

import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
import elfbuild  # noqa: E402
from readelf_text import readelf_functions  # noqa: E402

from usdtkit.elf import address_to_offset, find_symbol, read_functions  # noqa: E402
from usdtkit.elf.image import ElfImage  # noqa: E402
from usdtkit.elf.symbols import function_rows, read_functions as read_functions_from  # noqa: E402
from usdtkit.errors import ProbeNotFound  # noqa: E402

LIBJVM = "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so"
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
PYTHON = "/usr/bin/python3.11"
POSTGRES = "/usr/lib/postgresql/15/bin/postgres"
LIBSTDCXX = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"

def real(path: str) -> str:
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed")
    return path


def build_id(path: str) -> str:
    with ElfImage(path) as image:
        return image.build_id()


@pytest.mark.parametrize("path", [LIBJVM, POSTGRES, LIBSTDCXX])
def test_functions_equal_readelf(path):
    path = real(path)
    expected = readelf_functions(path)
    got = {(f.name, f.address): f for f in read_functions(path)}
    assert len(got) == len(read_functions(path)), "no duplicate (name, address)"
    assert set(got) == set(expected)
    for key, (size, bind, versions) in expected.items():
        f = got[key]
        assert f.size == size and f.binding == bind, key
        if versions:
            assert f.version in {v.lstrip("@") for v in versions}, key
        else:
            assert f.version is None


@pytest.mark.parametrize("path", [LIBC, PYTHON])
def test_stripped_binary_uses_its_build_id_debug_file(path):
    path = real(path)
    debug = f"/usr/lib/debug/.build-id/{build_id(path)[:2]}/{build_id(path)[2:]}.debug"
    if not os.path.exists(debug):
        pytest.skip(f"no debug file for {path}")
    expected = readelf_functions(path, (".dynsym",))
    expected.update({k: v for k, v in readelf_functions(debug, (".symtab",)).items() if k not in expected})
    functions = read_functions(path)
    got = {(f.name, f.address): f for f in functions}
    assert len(got) == len(functions)
    assert set(got) == set(expected)
    assert {f.source for f in functions} <= {debug, ".dynsym"}
    assert any(f.binding == "LOCAL" for f in functions), "static functions come from the debug file"
    for key, (size, _bind, _versions) in expected.items():
        assert got[key].size == size


def test_default_version_wins_for_one_address_exported_twice():
    path = real(LIBC)
    expected = readelf_functions(path, (".dynsym",))
    versions = expected[("pthread_attr_getstacksize", next(v for n, v in expected if n == "pthread_attr_getstacksize"))][2]
    assert versions == {"GLIBC_2.2.5", "@GLIBC_2.34"}
    (f,) = read_functions(path, "pthread_attr_getstacksize")
    assert f.version == "GLIBC_2.34"
    (m,) = read_functions(path, "malloc")
    assert (m.binding, m.version) == ("GLOBAL", "GLIBC_2.2.5")


@pytest.mark.parametrize("path", [LIBJVM, PYTHON, POSTGRES])
def test_file_offsets_follow_segments(path):
    path = real(path)
    with ElfImage(path) as image:
        loads = image.loads
    for f in read_functions(path)[::97]:
        seg = next(s for s in loads if s.vaddr <= f.address < s.vaddr + s.filesz)
        assert f.file_offset == f.address - seg.vaddr + seg.offset
        assert address_to_offset(path, f.address) == f.file_offset


def test_non_pie_offsets_differ_from_addresses():
    path = real(PYTHON)
    f = find_symbol(path, "PyObject_GetAttr")
    assert f.address - f.file_offset == 0x400000  # Debian's python3.11 is linked at 0x400000


def test_glob_filters():
    path = real(LIBJVM)
    jvm = read_functions(path, "JVM_*")
    assert jvm and all(f.name.startswith("JVM_") for f in jvm)
    assert {f.name for f in jvm} == {n for n, _ in readelf_functions(path) if n.startswith("JVM_")}
    assert [f.name for f in read_functions(path, "JVM_GetClassNameUT?")] == ["JVM_GetClassNameUTF"]
    assert read_functions(path, "no_such_function_*") == []


def test_find_symbol_and_not_found():
    path = real(LIBC)
    f = find_symbol(path, "malloc")
    assert (f.name, f.binding, f.version, f.binary) == ("malloc", "GLOBAL", "GLIBC_2.2.5", path)
    assert find_symbol(path, "malloc@GLIBC_2.2.5") == f
    with pytest.raises(ProbeNotFound, match="no function named definitely_not_here"):
        find_symbol(path, "definitely_not_here")
    with pytest.raises(ProbeNotFound):
        address_to_offset(path, 0x7FFFFFFFFFFF)


def test_demangling():
    if shutil.which("c++filt") is None:
        pytest.skip("c++filt is not installed")
    path = real(LIBSTDCXX)
    (join,) = read_functions(path, "_ZNSt6thread4joinEv", demangle=True)
    assert join.demangled == "std::thread::join()"
    by_pretty = read_functions(path, "std::thread::join*", demangle=True)
    assert [f.name for f in by_pretty] == ["_ZNSt6thread4joinEv"]
    plain = [f for f in read_functions(path, "malloc*", demangle=True)]
    assert all(f.demangled is None for f in plain)


def test_demangling_without_cxxfilt(monkeypatch):
    from usdtkit.elf import demangle

    monkeypatch.setattr(demangle.shutil, "which", lambda name: None)
    assert demangle.demangle_names(["_ZNSt6thread4joinEv", "main"]) == {"_ZNSt6thread4joinEv": "std::thread::join()"}


# --------------------------------------------------------------------------- synthetic tables
@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_both_classes_and_byte_orders(tmp_path, bits, endian):
    symbols = [
        ("global_fn", 0x1000, 16, 0x12, 1),  # GLOBAL FUNC
        ("local_fn", 0x1010, 8, 0x02, 1),  # LOCAL FUNC
        ("weak_fn", 0x1020, 4, 0x22, 1),  # WEAK FUNC
        ("ifunc", 0x1030, 4, 0x1A, 1),  # GLOBAL GNU_IFUNC
        ("imported", 0, 0, 0x12, 0),  # undefined
        ("an_object", 0x4000, 8, 0x11, 3),  # OBJECT
        ("versioned@@V2", 0x1040, 4, 0x12, 1),
        ("versioned@V1", 0x1040, 4, 0x12, 1),
    ]
    path = tmp_path / f"syms{bits}{endian}"
    path.write_bytes(elfbuild.probe_elf(bits, endian, symbols=symbols))
    rows = sorted((f.name, f.address, f.size, f.file_offset, f.binding, f.version)
                  for f in read_functions(str(path)))
    assert rows == [
        ("global_fn", 0x1000, 16, 0x1000, "GLOBAL", None),
        ("ifunc", 0x1030, 4, 0x1030, "GLOBAL", None),
        ("local_fn", 0x1010, 8, 0x1010, "LOCAL", None),
        ("versioned", 0x1040, 4, 0x1040, "GLOBAL", "V2"),
        ("weak_fn", 0x1020, 4, 0x1020, "WEAK", None),
    ]
    assert set(readelf_functions(str(path))) == {(r[0], r[1]) for r in rows}


# --------------------------------------------------------------------------- debug info
PROGRAM = r"""
#include <stdio.h>
__attribute__((noinline)) static int hidden_helper(int x) { return x * 3 + 1; }
__attribute__((noinline)) static int other_helper(int x) { return hidden_helper(x) - 2; }
int exported_entry(int x) { return other_helper(x); }
int main(int argc, char **argv) { printf("%d\n", exported_entry(argc)); return 0; }
"""


def _tools(*names):
    for name in names:
        if shutil.which(name) is None:
            pytest.skip(f"{name} is not installed")


@pytest.fixture
def program(tmp_path):
    _tools("gcc", "objcopy", "strip", "nm")
    src = tmp_path / "prog.c"
    src.write_text(PROGRAM)
    exe = tmp_path / "prog"
    subprocess.run(["gcc", "-O1", "-g", "-Wl,--build-id", "-rdynamic", "-o", str(exe), str(src)], check=True)
    return exe


def test_minidebuginfo(tmp_path, program):
    full = {(f.name, f.address, f.file_offset) for f in read_functions(str(program))}
    assert {"hidden_helper", "other_helper", "exported_entry"} <= {n for n, _a, _o in full}
    # The recipe of gdb's manual: keep the function symbols .dynsym lacks, xz them into .gnu_debugdata.
    dynsyms = set(subprocess.run(["nm", "-D", "--defined-only", "--format=posix", str(program)],
                                 capture_output=True, text=True, check=True).stdout.split())
    funcs = [line.split()[0] for line in subprocess.run(
        ["nm", "--defined-only", "--format=posix", str(program)], capture_output=True, text=True, check=True
    ).stdout.splitlines() if line.split()[1] in "Tt"]
    keep = tmp_path / "keep"
    keep.write_text("\n".join(f for f in funcs if f not in dynsyms) + "\n")
    mini = tmp_path / "mini"
    subprocess.run(["objcopy", "--only-keep-debug", str(program), str(mini)], check=True)
    subprocess.run(["objcopy", "-S", "--remove-section", ".gdb_index", "--remove-section", ".comment",
                    f"--keep-symbols={keep}", str(mini)], check=True)
    packed = tmp_path / "mini.xz"
    packed.write_bytes(lzma.compress(mini.read_bytes(), format=lzma.FORMAT_XZ))
    stripped = tmp_path / "stripped"
    subprocess.run(["strip", "--strip-all", "-o", str(stripped), str(program)], check=True)
    subprocess.run(["objcopy", "--add-section", f".gnu_debugdata={packed}", str(stripped)], check=True)

    functions = read_functions_from(str(stripped), debug_roots=[str(tmp_path / "nowhere")])
    got = {(f.name, f.address, f.file_offset) for f in functions}
    assert {"hidden_helper", "other_helper"} <= {f.name for f in functions if f.source == ".gnu_debugdata"}
    assert got <= full and {n for n, _a, _o in got} >= {"hidden_helper", "other_helper", "exported_entry", "main"}


def test_build_id_debug_file(tmp_path, program):
    full = {(f.name, f.address, f.size, f.file_offset) for f in read_functions(str(program))}
    bid = build_id(str(program))
    debug = tmp_path / "debugroot" / ".build-id" / bid[:2] / f"{bid[2:]}.debug"
    debug.parent.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(program), str(debug)], check=True)
    stripped = tmp_path / "stripped"
    subprocess.run(["strip", "--strip-all", "-o", str(stripped), str(program)], check=True)

    bare = read_functions_from(str(stripped), debug_roots=[str(tmp_path / "nowhere")])
    assert "hidden_helper" not in {f.name for f in bare}
    helped = read_functions_from(str(stripped), debug_roots=[str(tmp_path / "debugroot")])
    assert {(f.name, f.address, f.size, f.file_offset) for f in helped} == full
    assert {f.source for f in helped if f.name == "hidden_helper"} == {str(debug)}


def test_rows_and_objects_agree():
    path = real(POSTGRES)
    with ElfImage(path) as image:
        rows = function_rows(image)
    assert [(f.name, f.address, f.size, f.file_offset, f.binding, f.version, f.source, f.ifunc)
            for f in read_functions(path)] == rows


# --------------------------------------------------------------------------- indirect functions
def readelf_ifunc_names(*paths: str) -> set:
    names = set()
    for path in paths:
        out = subprocess.run(["readelf", "-sW", path], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 8 and fields[3] == "IFUNC" and fields[6] != "UND":
                names.add(fields[7].split("@")[0])
    return names


def test_ifunc_flags_equal_readelf_on_libc():
    libc = real(LIBC)
    functions = read_functions(libc)
    sources = {f.source for f in functions} - {".symtab", ".dynsym"}  # the debug file, when installed
    expected = readelf_ifunc_names(libc, *sources)
    assert {"strlen", "memcpy", "strchr"} <= expected
    assert {f.name for f in functions if f.ifunc} == expected
    assert not any(f.ifunc for f in functions if f.name in ("malloc", "printf"))


def test_an_unversioned_name_finds_the_default_version():
    # memcpy@@GLIBC_2.14 (an IFUNC) is what programs link against; memcpy@GLIBC_2.2.5 serves old binaries.
    symbol = find_symbol(real(LIBC), "memcpy")
    assert (symbol.version, symbol.ifunc) == ("GLIBC_2.14", True)
    assert find_symbol(LIBC, "memcpy@GLIBC_2.2.5").version == "GLIBC_2.2.5"
