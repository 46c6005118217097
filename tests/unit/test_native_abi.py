"""usdtkit's libstapsdt through its C ABI (ctypes), as the PyPI ``stapsdt`` package and other
bindings use it: struct layouts, errors, bad calls, the generated ELF object, both storage modes,
determinism and the C test suite in native/tests."""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from usdtkit import _native
from usdtkit.provider import SDTProbeStruct, SDTProviderStruct

ROOT = Path(__file__).resolve().parents[2]
NOP5 = bytes([0x0F, 0x1F, 0x44, 0x00, 0x00])

lib = ctypes.CDLL(_native.library_path())
ProviderPtr = ctypes.POINTER(SDTProviderStruct)
ProbePtr = ctypes.POINTER(SDTProbeStruct)
lib.providerInit.restype = ProviderPtr
lib.providerInit.argtypes = [ctypes.c_char_p]
lib.providerUseMemfd.argtypes = [ProviderPtr, ctypes.c_int]
lib.providerAddProbe.restype = ProbePtr
lib.providerAddProbe.argtypes = [ProviderPtr, ctypes.c_char_p, ctypes.c_int]
lib.providerLoad.argtypes = [ProviderPtr]
lib.providerUnload.argtypes = [ProviderPtr]
lib.providerDestroy.argtypes = [ProviderPtr]
lib.providerDestroy.restype = None
lib.probeFire.argtypes = [ProbePtr]
lib.probeFire.restype = None
lib.probeIsEnabled.argtypes = [ProbePtr]
lib.probeSemaphore.argtypes = [ProbePtr]
lib.probeSemaphore.restype = ctypes.c_void_p
lib.providerElfImage.argtypes = [ProviderPtr, ctypes.POINTER(ctypes.c_void_p),
                                 ctypes.POINTER(ctypes.c_uint64)]
lib.providerFreeImage.argtypes = [ctypes.c_void_p]
lib.providerFreeImage.restype = None

NULL_PROVIDER = ProviderPtr()
NULL_PROBE = ProbePtr()


pytestmark = pytest.mark.usefixtures("runtime_dir")  # every provider here writes to a private folder


@pytest.fixture
def provider():
    handles: List = []

    def make(name: str = "abi", memfd: bool = False):
        p = lib.providerInit(name.encode())
        assert p
        if memfd:
            assert lib.providerUseMemfd(p, 1) == 1
        handles.append(p)
        return p

    yield make
    for p in handles:
        lib.providerDestroy(p)


def error(p) -> str:
    return p.contents.error.decode()


def image_of(p) -> bytes:
    data, size = ctypes.c_void_p(), ctypes.c_uint64()
    assert lib.providerElfImage(p, ctypes.byref(data), ctypes.byref(size)) == 0, error(p)
    try:
        return ctypes.string_at(data.value, size.value)
    finally:
        lib.providerFreeImage(data)


# ---------------------------------------------------------------- layout and bad calls


def test_struct_layouts_match_the_abi():
    assert [(f, getattr(SDTProbeStruct, f).offset) for f, _ in SDTProbeStruct._fields_] == [
        ("name", 0), ("argFmt", 8), ("_fire", 32), ("provider", 40), ("argCount", 48)]
    assert [(f, getattr(SDTProviderStruct, f).offset) for f, _ in SDTProviderStruct._fields_] == [
        ("name", 0), ("probes", 8), ("errno", 16), ("error", 24), ("_handle", 32),
        ("_filename", 40), ("_memfd", 48), ("_use_memfd", 52)]


def test_fields_hold_what_bindings_read(provider):
    p = provider("layout")
    fields = p.contents
    assert (fields.name, fields.errno, fields.error, fields._memfd, fields._use_memfd) == (
        b"layout", -1, None, -1, 0)
    probe = lib.providerAddProbe(p, b"probe1", 3, 8, -4, 1)
    assert probe
    pc = probe.contents
    assert (pc.name, list(pc.argFmt), pc.argCount, pc._fire) == (b"probe1", [8, -4, 1, 0, 0, 0], 3, None)
    assert pc.provider == ctypes.cast(p, ctypes.c_void_p).value
    # provider->probes is an SDTProbeList_t whose first member is the probe.
    assert fields.probes == ctypes.cast(probe, ctypes.c_void_p).value


def test_null_pointers_and_bad_calls_never_crash():
    assert not lib.providerInit(None)
    for bad in (b"", b"1x", b"my-app", b"a b", b"x" * 65, "é".encode()):
        assert not lib.providerInit(bad), bad
    assert lib.providerUseMemfd(NULL_PROVIDER, 1) == 0
    assert not lib.providerAddProbe(NULL_PROVIDER, b"x", 0)
    assert lib.providerLoad(NULL_PROVIDER) == -1
    assert lib.providerUnload(NULL_PROVIDER) == -1
    lib.providerDestroy(NULL_PROVIDER)
    lib.probeFire(NULL_PROBE, 1, 2)
    assert lib.probeIsEnabled(NULL_PROBE) == 0
    assert lib.probeSemaphore(NULL_PROBE) is None
    assert lib.providerElfImage(NULL_PROVIDER, None, None) == -1


@pytest.mark.parametrize(
    "name, args, code, fragment",
    [
        (b"bad-name", [], 5, "invalid probe name 'bad-name'"),
        (None, [], 5, "invalid probe name NULL"),
        (b"x" * 65, [], 5, "at most 64 bytes"),
        (b"seven", [8] * 7, 5, "has 7 arguments; at most 6"),
        (b"neg", None, 5, "has -1 arguments"),
        (b"badtype", [3], 5, "argument 1 has invalid type 3"),
        (b"noarg_inside", [8, 0], 5, "argument 2 has invalid type 0"),
    ],
)
def test_bad_probe_definitions_are_refused_with_a_message(provider, name, args, code, fragment):
    p = provider("defs")
    count = -1 if args is None else len(args)
    assert not lib.providerAddProbe(p, name, count, *(args or []))
    assert p.contents.errno == code
    assert error(p).startswith("provider 'defs': ")
    assert fragment in error(p)


def test_duplicate_probe_names_are_refused(provider):
    p = provider("dups")
    first = lib.providerAddProbe(p, b"same", 1, 8)
    assert first and p.contents.errno == -1 and p.contents.error is None
    assert not lib.providerAddProbe(p, b"same", 0)
    assert error(p) == "provider 'dups': duplicate probe name 'same'"
    # The error is cleared by the next successful call.
    assert lib.providerAddProbe(p, b"other", 0)
    assert p.contents.errno == -1 and p.contents.error is None


def test_use_memfd_accepts_only_0_and_1(provider):
    p = provider("memfdopt")
    assert lib.providerUseMemfd(p, 7) == 0 and p.contents._use_memfd == 0
    assert lib.providerUseMemfd(p, 1) == 1 and p.contents._use_memfd == 1
    assert lib.providerUseMemfd(p, 0) == 1 and p.contents._use_memfd == 0


# ---------------------------------------------------------------- loading


def test_load_resolves_sites_and_semaphores(provider):
    p = provider("loads")
    a = lib.providerAddProbe(p, b"a", 2, -8, 8)
    b = lib.providerAddProbe(p, b"b", 0)
    assert lib.providerLoad(p) == 0, error(p)
    for probe in (a, b):
        site = probe.contents._fire
        assert ctypes.string_at(site, 6) == NOP5 + b"\xc3"
        sem = lib.probeSemaphore(probe)
        assert sem and ctypes.c_uint16.from_address(sem).value == 0
        assert lib.probeIsEnabled(probe) == 0
    sem = ctypes.c_uint16.from_address(lib.probeSemaphore(a))
    sem.value = 3  # what the kernel's uprobe reference counter does
    assert lib.probeIsEnabled(a) == 1 and lib.probeIsEnabled(b) == 0
    sem.value = 0
    lib.probeFire(a, ctypes.c_int64(-1), ctypes.c_uint64(2**64 - 1))
    lib.probeFire(b)

    assert lib.providerLoad(p) == -1 and "already loaded" in error(p)
    assert lib.providerUnload(p) == 0
    assert a.contents._fire is None and lib.probeSemaphore(a) is None
    assert lib.providerUnload(p) == 0  # idempotent


def test_probes_added_after_load_fire_after_reload(provider):
    p = provider("late")
    lib.providerAddProbe(p, b"early", 0)
    assert lib.providerLoad(p) == 0
    late = lib.providerAddProbe(p, b"late", 1, 4)
    assert late and late.contents._fire is None
    lib.probeFire(late, 5)  # harmless no-op
    assert lib.providerUnload(p) == 0 and lib.providerLoad(p) == 0
    assert late.contents._fire is not None
    lib.probeFire(late, 5)


def test_many_providers_at_once(provider):
    handles = [provider(f"many{i}", memfd=bool(i % 2)) for i in range(40)]
    probes = [lib.providerAddProbe(p, b"tick", 1, -8) for p in handles]
    for p in handles:
        assert lib.providerLoad(p) == 0, error(p)
    sites = {pr.contents._fire for pr in probes}
    assert len(sites) == len(probes)
    for pr in probes:
        lib.probeFire(pr, ctypes.c_int64(1))


def test_file_mode_names_the_file_by_content(provider, runtime_dir):
    p = provider("named")
    lib.providerAddProbe(p, b"x", 1, 8)
    assert lib.providerLoad(p) == 0
    path = Path(p.contents._filename.decode())
    data = path.read_bytes()
    assert data == image_of(p)
    assert path.parent == runtime_dir
    assert path.name == f"named-{hashlib.sha256(data).hexdigest()[:16]}.so"
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o444 and st.st_uid == os.geteuid()
    assert stat.S_IMODE(runtime_dir.stat().st_mode) == 0o700
    assert [f.name for f in runtime_dir.iterdir()] == [path.name]  # no temporary left behind


def test_same_definition_shares_one_file(provider, runtime_dir):
    a, b = provider("shared"), provider("shared")
    for p in (a, b):
        lib.providerAddProbe(p, b"x", 1, 8)
        assert lib.providerLoad(p) == 0
    assert a.contents._filename == b.contents._filename
    ino = os.stat(a.contents._filename).st_ino
    # A second load of the same definition reuses the file (same inode): tracers attached by path
    # keep covering it.
    assert lib.providerUnload(a) == 0 and lib.providerLoad(a) == 0
    assert os.stat(a.contents._filename).st_ino == ino


def test_damaged_file_is_replaced_before_loading(provider, runtime_dir):
    p = provider("damaged")
    lib.providerAddProbe(p, b"x", 0)
    assert lib.providerLoad(p) == 0
    path = p.contents._filename.decode()
    good = Path(path).read_bytes()
    assert lib.providerUnload(p) == 0
    os.chmod(path, 0o644)
    Path(path).write_bytes(good[:100] + b"\xcc" * (len(good) - 100))
    assert lib.providerLoad(p) == 0, error(p)
    assert Path(path).read_bytes() == good


def test_memfd_mode_leaves_nothing_on_disk(provider, runtime_dir):
    p = provider("inmem", memfd=True)
    probe = lib.providerAddProbe(p, b"x", 1, 8)
    assert lib.providerLoad(p) == 0, error(p)
    fd = p.contents._memfd
    assert fd >= 0 and p.contents._filename.decode() == f"/proc/self/fd/{fd}"
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:usdtkit-inmem")
    assert not runtime_dir.exists() or not any(runtime_dir.iterdir())
    with open(f"/proc/self/fd/{fd}", "rb") as handle:
        assert handle.read() == image_of(p)
    site = probe.contents._fire
    maps = Path("/proc/self/maps").read_text()
    assert any("/memfd:usdtkit-inmem" in line and "r-xp" in line for line in maps.splitlines())
    assert lib.providerUnload(p) == 0
    assert p.contents._memfd == -1
    assert not os.path.exists(f"/proc/self/fd/{fd}") or "memfd:usdtkit-inmem" not in os.readlink(
        f"/proc/self/fd/{fd}")
    assert "/memfd:usdtkit-inmem" not in Path("/proc/self/maps").read_text()
    assert site is not None


def test_runtime_dir_errors_name_the_provider_and_cause(provider, tmp_path, monkeypatch):
    p = provider("storage")
    lib.providerAddProbe(p, b"x", 0)
    monkeypatch.setenv("USDTKIT_RUNTIME_DIR", "relative")
    assert lib.providerLoad(p) == -1
    assert p.contents.errno == 1  # tmpCreationError
    assert error(p).startswith("provider 'storage': cannot store the ELF image: ")
    assert "absolute" in error(p)

    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("USDTKIT_RUNTIME_DIR", str(tmp_path / "link"))
    assert lib.providerLoad(p) == -1 and "symlink" in error(p)

    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)
    monkeypatch.setenv("USDTKIT_RUNTIME_DIR", str(tmp_path / "open"))
    assert lib.providerLoad(p) == -1 and "writable by others (mode 0777)" in error(p)


def test_default_runtime_dir_is_under_xdg_runtime_dir(provider, tmp_path, monkeypatch):
    monkeypatch.delenv("USDTKIT_RUNTIME_DIR")
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    p = provider("xdgdir")
    lib.providerAddProbe(p, b"x", 0)
    assert lib.providerLoad(p) == 0, error(p)
    assert p.contents._filename.decode().startswith(f"{xdg}/usdtkit/xdgdir-")
    assert stat.S_IMODE((xdg / "usdtkit").stat().st_mode) == 0o700

    # An XDG_RUNTIME_DIR others can write is not trusted: another candidate is used.
    os.chmod(xdg, 0o777)
    q = provider("xdgdir2")
    lib.providerAddProbe(q, b"x", 0)
    assert lib.providerLoad(q) == 0, error(q)
    fallback = q.contents._filename.decode()
    try:
        assert not fallback.startswith(str(xdg))
    finally:  # the fallback is a shared system location: leave nothing behind there
        lib.providerUnload(q)
        os.unlink(fallback)


# ---------------------------------------------------------------- the generated object


def readelf(*args: str) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed")
    return subprocess.run(["readelf", "-W", *args], check=True, capture_output=True, text=True).stdout


def parse_notes(path: str) -> Dict[str, Dict[str, str]]:
    notes = {}
    pattern = re.compile(
        r"Provider: (\S+)\s+Name: (\S+)\s+Location: (0x[0-9a-f]+), Base: (0x[0-9a-f]+), "
        r"Semaphore: (0x[0-9a-f]+)\s+Arguments: ?([^\n]*)")
    for m in pattern.finditer(readelf("-n", path)):
        notes[m.group(2)] = dict(provider=m.group(1), pc=int(m.group(3), 16), base=int(m.group(4), 16),
                                 semaphore=int(m.group(5), 16), args=m.group(6).strip())
    return notes


def test_readelf_shows_probes_with_semaphores_and_nop5_sites(provider):
    p = provider("elfcheck")
    handles = {
        "all_sizes": lib.providerAddProbe(p, b"all_sizes", 6, 1, -1, 2, -2, 4, -4),
        "wide": lib.providerAddProbe(p, b"wide", 2, 8, -8),
        "bare": lib.providerAddProbe(p, b"bare", 0),
    }
    assert lib.providerLoad(p) == 0
    path = p.contents._filename.decode()
    data = Path(path).read_bytes()
    notes = parse_notes(path)
    assert set(notes) == {"all_sizes", "wide", "bare"}
    assert notes["all_sizes"]["args"] == "1@%dil -1@%sil 2@%dx -2@%cx 4@%r8d -4@%r9d"
    assert notes["wide"]["args"] == "8@%rdi -8@%rsi"
    assert notes["bare"]["args"] == ""

    sections = {m.group(1): (int(m.group(2), 16), int(m.group(3), 16), int(m.group(4), 16), m.group(5))
                for m in re.finditer(r"\]\s+(\S+)\s+\S+\s+([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+) \S+ +(\S*)",
                                     readelf("-S", path))}
    text_addr, text_off, text_size, text_flags = sections[".text"]
    probes_addr, probes_off, probes_size, probes_flags = sections[".probes"]
    base_addr = sections[".stapsdt.base"][0]
    assert "X" in text_flags and "W" in probes_flags and "A" in probes_flags
    sems = set()
    for name, note in notes.items():
        assert note["provider"] == "elfcheck"
        assert note["base"] == base_addr
        assert text_addr <= note["pc"] < text_addr + text_size
        file_off = note["pc"] - text_addr + text_off
        assert data[file_off:file_off + 5] == NOP5, "the USDT site is a 5-byte NOP"
        assert probes_addr <= note["semaphore"] < probes_addr + probes_size
        sem_off = note["semaphore"] - probes_addr + probes_off
        assert data[sem_off:sem_off + 2] == b"\0\0"
        sems.add(note["semaphore"])
        # In memory, the site and the counter we read are where the note says (same load base):
        # the kernel's reference counter lands exactly where probeIsEnabled() looks.
        base = handles[name].contents._fire - note["pc"]
        assert lib.probeSemaphore(handles[name]) == base + note["semaphore"]
    assert len(sems) == 3, "every probe has its own semaphore"


def test_segments_no_executable_stack_and_dynamic_symbols(provider):
    p = provider("segments")
    lib.providerAddProbe(p, b"one", 1, 8)
    lib.providerAddProbe(p, b"two", 0)
    assert lib.providerLoad(p) == 0
    path = p.contents._filename.decode()
    phdrs = readelf("-l", path)
    stack = re.search(r"GNU_STACK\s+(?:\S+\s+){5}(\S+)", phdrs)
    assert stack and stack.group(1) == "RW"
    loads = re.findall(r"LOAD\s+(?:\S+\s+){5}(R?\s?W?\s?E?)\s+0x1000", phdrs)
    assert [flags.replace(" ", "") for flags in loads] == ["R", "RE", "RW"]
    assert "DYNAMIC" in phdrs
    symbols = readelf("--dyn-syms", path)
    assert re.search(r"FUNC\s+GLOBAL\s+DEFAULT\s+\d+ one$", symbols, re.M)
    assert re.search(r"FUNC\s+GLOBAL\s+DEFAULT\s+\d+ two$", symbols, re.M)


def test_image_is_deterministic_within_and_across_processes(provider):
    def define(p):
        lib.providerAddProbe(p, b"a", 3, -8, 1, 8)
        lib.providerAddProbe(p, b"b", 0)

    a, b = provider("determ"), provider("determ")
    define(a)
    define(b)
    assert image_of(a) == image_of(b)
    digest = hashlib.sha256(image_of(a)).hexdigest()

    code = (
        "import ctypes, hashlib, usdtkit._native as n\n"
        "lib = ctypes.CDLL(n.library_path())\n"
        "lib.providerInit.restype = ctypes.c_void_p\n"
        "lib.providerAddProbe.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]\n"
        "lib.providerElfImage.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]\n"
        "p = lib.providerInit(b'determ')\n"
        "lib.providerAddProbe(p, b'a', 3, -8, 1, 8)\n"
        "lib.providerAddProbe(p, b'b', 0)\n"
        "d, s = ctypes.c_void_p(), ctypes.c_uint64()\n"
        "assert lib.providerElfImage(p, ctypes.byref(d), ctypes.byref(s)) == 0\n"
        "print(hashlib.sha256(ctypes.string_at(d.value, s.value)).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip() == digest

    c = provider("determ")
    lib.providerAddProbe(c, b"a", 3, -8, -1, 8)  # one type differs
    lib.providerAddProbe(c, b"b", 0)
    assert image_of(c) != image_of(a)
    d = provider("determ")
    lib.providerAddProbe(d, b"b", 0)  # same probes, other order
    lib.providerAddProbe(d, b"a", 3, -8, 1, 8)
    assert image_of(d) != image_of(a)


# ---------------------------------------------------------------- leaks


@pytest.mark.parametrize("memfd", [False, True], ids=["file", "memfd"])
def test_thousand_cycles_leak_nothing(memfd, footprint):
    def cycle(i: int) -> None:
        p = lib.providerInit(b"cycle")
        assert lib.providerUseMemfd(p, int(memfd)) == 1
        probe = lib.providerAddProbe(p, b"tick", 1, -8)
        assert lib.providerLoad(p) == 0, error(p)
        lib.probeFire(probe, ctypes.c_int64(i))
        assert lib.providerUnload(p) == 0
        lib.providerDestroy(p)

    cycle(0)  # warm-up: first use creates the runtime dir, etc.
    fds, maps, files = footprint()
    for i in range(1000):
        cycle(i)
    after_fds, after_maps, after_files = footprint()
    assert after_fds == fds
    assert after_maps == maps
    assert after_files == files


# ---------------------------------------------------------------- the C test suite


def test_c_abi_suite(tmp_path):
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make and gcc are needed to build the C tests")
    out = subprocess.run(["make", "-s", "-C", str(ROOT / "native"), f"OUT={tmp_path}", "test"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^\d+ passed, 0 failed$", out.stdout, re.M), out.stdout
