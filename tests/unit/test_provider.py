"""The Pythonic provider API: declaration, validation, the enabled view, argument checking and
conversion, reloads, the traced decorator and spans.

A tracer is simulated by writing the probe's semaphore (exactly what the kernel does when a USDT
tracer attaches), and what reaches the native probe function is observed by swapping the probe's
call target for a recorder after checking that the real call works."""
from __future__ import annotations

import asyncio
import ctypes
import enum
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, List, Tuple

import pytest
from hypothesis import given, settings, strategies as st

import usdtkit  # noqa: F401  (first: preloads our libstapsdt.so, which `import stapsdt` then finds)
import stapsdt
from usdtkit.errors import ProviderError
from usdtkit.provider import (
    MAX_STRING_BYTES,
    Probe,
    Provider,
    Semaphore,
    int8,
    int16,
    int32,
    int64,
    uint8,
    uint16,
    uint32,
    uint64,
)

RANGES = {
    int8: (-(2**7), 2**7 - 1), int16: (-(2**15), 2**15 - 1), int32: (-(2**31), 2**31 - 1),
    int64: (-(2**63), 2**63 - 1), uint8: (0, 2**8 - 1), uint16: (0, 2**16 - 1),
    uint32: (0, 2**32 - 1), uint64: (0, 2**64 - 1),
}


pytestmark = pytest.mark.usefixtures("runtime_dir")  # every provider here writes to a private folder


@pytest.fixture
def app():
    provider = Provider("unitapp")
    yield provider
    provider.close()


class Recorder:
    """Stands in for a probe's native function; records the converted arguments (64-bit values
    boxed for ctypes are unboxed; :class:`RegisterRecorder` checks what really reaches the
    registers)."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(tuple(a.value if isinstance(a, (ctypes.c_int64, ctypes.c_uint64)) else a
                                for a in args))


def traced(probe: Probe) -> Recorder:
    """Simulate an attached tracer: bump the semaphore, record what the probe passes down."""
    assert probe.loaded
    probe.enabled.value += 1
    recorder = Recorder()
    probe._slot.call = recorder
    probe._slot.addr = 0  # no C fast path: every fire reaches the Python recorder
    return recorder


# ---------------------------------------------------------------- declaration


def test_python_types_map_to_native_types(app):
    probe = app.probe("typed", int, bool, str, bytes, uint8, int32)
    assert probe.types == (int, bool, str, bytes, uint8, int32)
    assert probe.argument_types == (
        stapsdt.ArgTypes.int64, stapsdt.ArgTypes.uint8, stapsdt.ArgTypes.uint64,
        stapsdt.ArgTypes.uint64, stapsdt.ArgTypes.uint8, stapsdt.ArgTypes.int32)
    assert app.probes == {"typed": probe}
    assert repr(probe) == "<Probe unitapp:typed(int, bool, str, bytes, uint8, int32) enabled=False>"


@pytest.mark.parametrize("name", ["", "1st", "has-dash", "has space", "é", "x" * 65, "a.b"])
def test_invalid_names_are_refused(app, name):
    with pytest.raises(ValueError, match="invalid probe name"):
        app.probe(name)
    with pytest.raises(ValueError, match="invalid provider name"):
        Provider(name)


def test_name_limits_and_types():
    with pytest.raises(TypeError, match="must be a str"):
        Provider(b"bytes")  # type: ignore[arg-type]
    with Provider("x" * 64) as longest:
        longest.probe("y" * 64)


@pytest.mark.parametrize("bad", [float, list, None, 8, stapsdt.ArgTypes.noarg, "int"])
def test_unsupported_argument_types_are_refused(app, bad):
    with pytest.raises(TypeError, match="unsupported probe argument type"):
        app.probe("p", bad)


def test_more_than_six_arguments_are_refused(app):
    app.probe("six", *[int] * 6)
    with pytest.raises(ValueError, match=r"unitapp:seven has 7 arguments; at most 6"):
        app.probe("seven", *[int] * 7)


def test_duplicates_are_refused(app):
    app.probe("once")
    with pytest.raises(ValueError, match="unitapp:once is already declared"):
        app.probe("once", int)


def test_probes_cannot_be_constructed_directly():
    with pytest.raises(TypeError, match="Provider.probe"):
        Probe()


# ---------------------------------------------------------------- the enabled view


def test_enabled_is_a_live_view_of_the_semaphore(app):
    probe = app.probe("view")
    assert not probe.enabled and not probe.loaded  # before load
    app.load()
    assert probe.loaded and isinstance(probe.enabled, Semaphore)
    assert not probe.enabled and probe.enabled == False and int(probe.enabled) == 0  # noqa: E712
    view = probe.enabled
    view.value = 2  # two tracer probes attached
    assert probe.enabled and probe.enabled == True and int(probe.enabled) == 2  # noqa: E712
    assert repr(probe.enabled) == "<Semaphore enabled=True count=2>"
    assert "enabled=True" in repr(probe)
    view.value = 0
    app.unload()
    assert not probe.enabled and not probe.loaded
    assert probe.enabled is not view  # the view of unmapped memory was swapped out


def test_semaphore_equals_its_count_and_bools_its_truth(app):
    probe = app.probe("counted")
    other = app.probe("other")
    app.load()
    probe.enabled.value = 3  # three tracer probes attached
    try:
        assert probe.enabled == 3 and 3 == probe.enabled and not probe.enabled != 3
        assert probe.enabled != 1 and probe.enabled != 0 and probe.enabled != 2
        assert probe.enabled == True and probe.enabled != False  # noqa: E712  (truth, not count)
        assert probe.enabled != other.enabled and other.enabled == 0 and other.enabled == False  # noqa: E712
        other.enabled.value = 3
        assert probe.enabled == other.enabled  # same count
        assert probe.enabled != "3" and probe.enabled != 3.5 and probe.enabled != None  # noqa: E711
        with pytest.raises(TypeError):
            hash(probe.enabled)  # a live count: no stable hash
    finally:
        probe.enabled.value = other.enabled.value = 0


def test_enabled_reads_the_memory_the_library_reports(app):
    probe = app.probe("same_memory")
    app.load()
    from usdtkit.provider import _probe_semaphore

    assert ctypes_address(probe.enabled) == _probe_semaphore(probe._native)


def ctypes_address(obj: Any) -> int:
    import ctypes

    return ctypes.addressof(obj)


# ---------------------------------------------------------------- firing and argument checks


def test_disabled_probes_do_not_look_at_arguments(app):
    probe = app.probe("lazy", uint8, str)
    app.load()
    recorder = Recorder()
    probe._slot.call = recorder
    probe._slot.addr = 0
    probe(300, 12)  # would be invalid, but nobody traces: nothing is converted or checked
    probe.fire(object(), None)
    assert recorder.calls == []


def test_enabled_probe_really_calls_the_native_site(app):
    probe = app.probe("real", int8, uint16, int32, uint64, bool, str)
    app.load()
    probe.enabled.value = 1
    try:
        probe(-128, 65535, -(2**31), 2**64 - 1, True, "héllo")  # real ctypes call into the site
        probe.fire(0, 0, 0, 0, False, None)
    finally:
        probe.enabled.value = 0


@pytest.mark.parametrize("width", list(RANGES), ids=lambda w: w.name)
def test_fixed_widths_accept_their_full_range_and_nothing_more(app, width):
    probe = app.probe("width", width)
    app.load()
    rec = traced(probe)
    low, high = RANGES[width]
    for value in (low, high, 0 if low == 0 else -1, 1):
        probe(value)
    assert [c[0] for c in rec.calls] == [low, high, 0 if low == 0 else -1, 1]
    for value in (low - 1, high + 1):
        with pytest.raises(ValueError, match=rf"unitapp:width: argument 1 \({width.name}\) = {value} "
                                             rf"is out of range \[{low}, {high}\]"):
            probe(value)
    assert len(rec.calls) == 4


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(RANGES)), st.integers(min_value=-(2**70), max_value=2**70))
def test_integers_pass_exactly_or_raise(width, value):
    with Provider("hyp") as provider:
        probe = provider.probe("p", width)
        provider.load()
        rec = traced(probe)
        low, high = RANGES[width]
        if low <= value <= high:
            probe(value)
            assert rec.calls == [(value,)]
        else:
            with pytest.raises(ValueError):
                probe(value)
            assert rec.calls == []


def test_int_arguments_accept_index_types_and_refuse_others(app):
    class Color(enum.IntEnum):
        RED = 7

    class Index:
        def __index__(self) -> int:
            return 42

    probe = app.probe("ints", int)
    app.load()
    rec = traced(probe)
    probe(True)
    probe(Color.RED)
    probe(Index())
    assert rec.calls == [(1,), (7,), (42,)]
    for bad in (1.0, "1", b"1", None, [1]):
        with pytest.raises(TypeError, match=r"argument 1 \(int\) must be an int"):
            probe(bad)


def test_bool_arguments(app):
    probe = app.probe("flags", bool)
    app.load()
    rec = traced(probe)
    for value in (True, False, 1, 0):
        probe(value)
    assert [c[0] for c in rec.calls] == [True, False, 1, 0]
    for bad in (2, -1, "yes", None, 0.0):
        with pytest.raises(TypeError, match=r"argument 1 \(bool\) must be a bool"):
            probe(bad)


def test_strings_are_utf8_pointers(app):
    probe = app.probe("texts", str, bytes)
    app.load()
    rec = traced(probe)
    probe("héllo ✓ 日本", b"raw\xff")
    probe("", bytearray(b"ba"))
    probe(None, memoryview(b"mv"))
    assert rec.calls == [("héllo ✓ 日本".encode(), b"raw\xff"), (b"", b"ba"), (None, b"mv")]


def test_strings_with_nul_are_refused(app):
    probe = app.probe("nul", str)
    app.load()
    traced(probe)
    with pytest.raises(ValueError, match=r"unitapp:nul: argument 1 \(str\) contains a NUL byte"):
        probe("a\0b")
    with pytest.raises(ValueError, match="NUL"):
        probe(b"a\0b")
    with pytest.raises(TypeError, match=r"must be str or bytes, not int"):
        probe(5)
    with pytest.raises(UnicodeEncodeError):
        probe("\ud800")  # a lone surrogate is not UTF-8


def test_long_strings_are_cut_at_the_cap_on_a_character_boundary(app):
    probe = app.probe("long", str, bytes)
    app.load()
    rec = traced(probe)
    probe("é" * 3000 + "x", b"y" * (MAX_STRING_BYTES + 10))
    text, raw = rec.calls[0]
    assert text == ("é" * (MAX_STRING_BYTES // 2)).encode() and len(text) == MAX_STRING_BYTES
    assert raw == b"y" * MAX_STRING_BYTES
    probe("✓" * 2000, b"")  # 3-byte characters: 4096 is not a multiple of 3
    cut = rec.calls[1][0]
    assert len(cut) == 4095 and cut.decode() == "✓" * 1365
    probe("a" * MAX_STRING_BYTES, b"")
    assert rec.calls[2][0] == b"a" * MAX_STRING_BYTES


def test_wrong_argument_count_is_a_type_error(app):
    probe = app.probe("two", int, int)
    app.load()
    with pytest.raises(TypeError, match=r"two\(\) takes 2 positional arguments but 3 were given"):
        probe(1, 2, 3)
    with pytest.raises(TypeError):
        probe.fire(1)


def test_keyword_probe_names_work(app):
    probe = app.probe("return", int)
    app.load()
    rec = traced(probe)
    probe(3)
    assert rec.calls == [(3,)]


# ---------------------------------------------------------------- lifecycle


def test_load_is_idempotent_and_reloads_for_new_probes(app, runtime_dir):
    first = app.probe("first", int)
    assert app.load() is app and app.loaded and not app.needs_reload
    path = app.path
    assert path and Path(path).parent == runtime_dir
    app.load()
    assert app.path == path
    late = app.probe("late", str)
    assert app.needs_reload and not late.loaded and not late.enabled
    late("ignored")  # not in the loaded object yet: nothing happens
    app.load()
    assert not app.needs_reload and late.loaded and first.loaded
    assert app.path != path  # a new definition is a new file
    assert sorted(p.name for p in runtime_dir.iterdir()) == sorted([Path(path).name, Path(app.path).name])


def test_unload_and_close(app):
    probe = app.probe("p", int)
    app.load()
    app.unload()
    assert not app.loaded and app.path is None and not probe.loaded
    app.unload()  # idempotent
    app.load()
    assert probe.loaded
    app.close()
    assert app.closed and not probe.loaded and not probe.enabled
    probe(1)  # harmless
    app.close()  # idempotent
    with pytest.raises(ProviderError, match="provider 'unitapp' is closed"):
        app.probe("more")
    with pytest.raises(ProviderError, match="closed"):
        app.load()
    assert repr(app) == "<Provider 'unitapp' 1 probes, closed>"


def test_context_manager_closes():
    with Provider("ctx") as provider:
        provider.probe("p")
        provider.load()
        assert provider.loaded
    assert provider.closed


def test_memfd_mode(runtime_dir):
    with Provider("mem", memfd=True) as provider:
        provider.probe("p", int)
        provider.load()
        assert provider.memfd
        path = provider.path
        assert path and path.startswith(f"/proc/{os.getpid()}/fd/")
        assert os.readlink(path).startswith("/memfd:usdtkit-mem")
        assert Path(path).read_bytes()[:4] == b"\x7fELF"
    assert not runtime_dir.exists() or not list(runtime_dir.iterdir())


def test_library_errors_raise_provider_error_with_the_message(monkeypatch, tmp_path):
    monkeypatch.setenv("USDTKIT_RUNTIME_DIR", "not/absolute")
    with Provider("failing") as provider:
        provider.probe("p")
        with pytest.raises(ProviderError) as info:
            provider.load()
        message = str(info.value)
        assert message.startswith("cannot load provider 'failing': provider 'failing': ")
        assert "USDTKIT_RUNTIME_DIR must be an absolute path" in message
        assert not provider.loaded
        monkeypatch.setenv("USDTKIT_RUNTIME_DIR", str(tmp_path / "fixed"))
        provider.load()  # recovers once the cause is fixed
        assert provider.loaded


# ---------------------------------------------------------------- traced and spans


def test_traced_decorator_fires_entry_and_return(app):
    @app.traced()
    def work(x: int, y: int = 2) -> int:
        """Doc."""
        time.sleep(0.01)
        return x * y

    assert work.__name__ == "work" and work.__doc__ == "Doc."
    assert set(app.probes) == {"work_entry", "work_return"}
    assert app.probes["work_return"].types == (uint64, uint64, bool)
    app.load()
    assert work(3) == 6  # untraced: plain call
    entry, ret = traced(work.entry_probe), traced(work.return_probe)
    assert work(3, y=4) == 12
    assert len(entry.calls) == 1 and len(ret.calls) == 1
    (call_id,), (ret_id, duration, raised) = entry.calls[0], ret.calls[0]
    assert call_id == ret_id and raised is False
    assert 10_000_000 <= duration < 5_000_000_000


def test_traced_reports_exceptions(app):
    @app.traced("risky")
    def fail() -> None:
        raise KeyError("boom")

    app.load()
    ret = traced(fail.return_probe)
    with pytest.raises(KeyError):
        fail()
    assert ret.calls[0][2] is True


def test_traced_return_alone_still_measures(app):
    @app.traced()
    def quick() -> str:
        return "ok"

    app.load()
    ret = traced(quick.return_probe)
    entry = Recorder()
    quick.entry_probe._slot.call = entry  # entry not enabled
    quick.entry_probe._slot.addr = 0
    assert quick() == "ok"
    assert entry.calls == [] and len(ret.calls) == 1 and ret.calls[0][2] is False


def test_traced_async_functions(app):
    @app.traced()
    async def fetch(v: int) -> int:
        await asyncio.sleep(0.01)
        return v + 1

    app.load()
    entry, ret = traced(fetch.entry_probe), traced(fetch.return_probe)
    assert asyncio.run(fetch(1)) == 2
    assert entry.calls[0][0] == ret.calls[0][0] and ret.calls[0][1] >= 10_000_000


def test_traced_needs_a_usable_name(app):
    with pytest.raises(ValueError, match="pass traced"):
        app.traced()(lambda: None)


def test_span_start_and_done_share_an_id(app):
    db = app.span("db_query")
    assert app.span("db_query") is db
    assert set(app.probes) == {"db_query_start", "db_query_done"}
    app.load()
    start, done = traced(db.start), traced(db.done)
    with db() as first:
        time.sleep(0.005)
    with pytest.raises(RuntimeError):
        with db() as second:
            raise RuntimeError
    assert first != second
    assert start.calls == [(first,), (second,)]
    assert [c[0] for c in done.calls] == [first, second]
    assert done.calls[0][1] >= 5_000_000 and done.calls[0][2] is False
    assert done.calls[1][2] is True


def test_span_async_and_untraced(app):
    db = app.span("q")
    app.load()

    async def use() -> int:
        async with db() as sid:
            return sid

    sid = asyncio.run(use())  # untraced: still an id, nothing fired
    assert isinstance(sid, int) and sid > 0
    start, done = traced(db.start), traced(db.done)
    sid = asyncio.run(use())
    assert start.calls == [(sid,)] and done.calls[0][0] == sid


# ---------------------------------------------------------------- what reaches the registers

RECORDER_C = r"""
#include <stdint.h>
#include <string.h>
uint64_t regs[6];
unsigned calls, strmask;
char strs[6][8192];
int strnull[6];
void record(uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5) {
  uint64_t v[6] = {a0, a1, a2, a3, a4, a5};
  for (int i = 0; i < 6; i++) {
    regs[i] = v[i];
    if (strmask & (1u << i)) {   /* copy the string while the pointer is valid */
      strnull[i] = v[i] == 0;
      if (v[i]) { strncpy(strs[i], (const char *)v[i], sizeof(strs[i]) - 1); }
    }
  }
  calls++;
}
"""


class RegisterRecorder:
    """A C function with the probe's calling convention that stores its six argument registers;
    values are decoded like a tracer decodes the note's spec (``-4@%edi``: low 4 bytes, signed)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.regs = (ctypes.c_uint64 * 6).in_dll(lib, "regs")
        self.strs = (ctypes.c_char * 8192 * 6).in_dll(lib, "strs")
        self.strnull = (ctypes.c_int * 6).in_dll(lib, "strnull")
        self.count = ctypes.c_uint.in_dll(lib, "calls")
        self.address = ctypes.cast(lib.record, ctypes.c_void_p).value
        self.probe: Any = None

    def attach(self, probe: Probe) -> "RegisterRecorder":
        self.probe = probe
        ctypes.c_uint.in_dll(self.lib, "strmask").value = sum(
            1 << i for i, t in enumerate(probe.types) if t in (str, bytes))
        probe.enabled.value += 1
        probe._slot.call = ctypes.PYFUNCTYPE(None)(self.address)
        probe._slot.addr = self.address  # the C fast path (when built) calls the recorder directly
        return self

    def last(self) -> Tuple[Any, ...]:
        out = []
        for i, (declared, code) in enumerate(zip(self.probe.types, self.probe.argument_types)):
            reg = self.regs[i]
            if declared in (str, bytes):
                out.append(None if self.strnull[i] else self.strs[i].value)
                continue
            bits = 8 * abs(int(code))
            value = reg & ((1 << bits) - 1)
            if int(code) < 0 and value >= 1 << (bits - 1):
                value -= 1 << bits
            out.append(bool(value) if declared is bool else value)
        return tuple(out)


@pytest.fixture(scope="module")
def registers(tmp_path_factory: pytest.TempPathFactory) -> RegisterRecorder:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the register recorder")
    out = tmp_path_factory.mktemp("recorder")
    (out / "record.c").write_text(RECORDER_C)
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(out / "record.so"), str(out / "record.c")],
                   check=True, capture_output=True)
    return RegisterRecorder(ctypes.CDLL(str(out / "record.so")))


BOUNDARIES = [-(2**63), -(2**31) - 1, -(2**31), -129, -128, -1, 0, 1, 127, 128, 255, 256,
              2**15 - 1, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


@pytest.mark.parametrize("width", list(RANGES), ids=lambda w: w.name)
def test_registers_carry_exact_values(app, registers, width):
    probe = app.probe("regs", width, int, width)
    app.load()
    rec = registers.attach(probe)
    low, high = RANGES[width]
    for value in (v for v in BOUNDARIES if low <= v <= high):
        probe(value, -value if -(2**63) <= -value < 2**63 else 0, value)
        assert rec.last() == (value, -value if -(2**63) <= -value < 2**63 else 0, value), value


def test_registers_carry_strings_and_bools(app, registers):
    probe = app.probe("strs", str, bytes, bool, str, bool, uint64)
    app.load()
    rec = registers.attach(probe)
    before = rec.count.value
    probe("héllo ✓ 日本", b"raw\xff", True, None, False, 2**64 - 1)
    assert rec.count.value == before + 1
    assert rec.last() == ("héllo ✓ 日本".encode(), b"raw\xff", True, None, False, 2**64 - 1)
    probe("x" * 5000, b"", 1, "", 0, 0)
    assert rec.last() == (b"x" * MAX_STRING_BYTES, b"", True, b"", False, 0)


def test_c_fast_path_fires_plain_values_and_declines_everything_else():
    """The optional C path changes the cost of firing, never its behaviour: anything unusual is
    handed back (False) to the Python path, which converts it or raises the documented error."""
    fast = pytest.importorskip("usdtkit._native._fastfire")
    with Provider("fastpath") as provider:
        probe = provider.probe("p", uint8, str)
        provider.load()
        address = probe._slot.addr
        assert address and fast.MAX_STRING_BYTES == 4096
        assert fast.fire(address, b"Bs", 3, "x") is True
        assert fast.fire(address, b"Bs", 3, None) is True
        assert fast.fire(address, b"Bs", 3, b"raw") is True
        for declined in [(300, "x"), (-1, "x"), (True, "x"), (3, "a\0b"), (3, "x" * 5000), (3, 7),
                         (3.0, "x"), (3, "\ud800")]:
            assert fast.fire(address, b"Bs", *declined) is False, declined
        assert fast.fire(0, b"Bs", 3, "x") is False  # unloaded
        assert fast.fire(address, b"Bs", 3) is False  # wrong count
        with pytest.raises(TypeError):
            fast.fire(address, "Bs", 3, "x")
