"""The path layout -> backend -> decoding -> results, through the in-memory backend (no root).

What the kernel would write is built with the layout's own ``pack``: every record and key shape the
code generator emits (signed and unsigned arguments, strings that fit, are cut or could not be read,
comm, pid, stacks, log2 and linear histograms split or not, latency pairs) is decoded back into the
values that went in.  The same paths run against real probes in tests/integration.
"""
from __future__ import annotations

import os

import pytest

from usdtkit.bpf import codegen
from usdtkit.bpf.fake import FakeBackend, FakeProgram
from usdtkit.bpf.layout import (STAT_HITS, STAT_LOST_EVENTS, STAT_PAIRED, STAT_READ_ERRORS, STAT_UNMATCHED,
                                StructLayout)
from usdtkit.collect.results import Histogram
from usdtkit.collect.text import CUT_MARK
from usdtkit.elf.model import Arg, Memory, Register, RegisterValue
from usdtkit.errors import UsageError
from usdtkit.expr.fields import Field
from usdtkit.plan.plan import AttachPlan
from usdtkit.plan.refs import ProbeRef
from usdtkit.plan.request import HistSpec, PairSpec, TraceRequest
from usdtkit.plan.resolve import ResolvedProbe, Site
from usdtkit.tracing.session import Session


def reg(name: str, bits: int = 64) -> Register:
    return Register(name, bits, 0, name)


SIGNED = Arg(4, True, RegisterValue(reg("rdi", 32)), "-4@%edi")
POINTER = Arg(8, False, RegisterValue(reg("rsi")), "8@%rsi")
UNSIGNED = Arg(8, False, Memory(reg("rbp"), -16), "8@-16(%rbp)")


def usdt(name: str, *args: Arg, provider: str = "app") -> ResolvedProbe:
    site = Site("/bin/app", 0x1000, 0x1000, 0, tuple(args))
    return ResolvedProbe(ProbeRef("usdt", "/bin/app", name, provider), "/bin/app", (site,), len(args))


def session_of(probes, pid=None, **request) -> tuple[Session, FakeProgram]:
    plan = AttachPlan(TraceRequest(tuple(p.ref for p in probes), **request), tuple(probes), pid)
    backend = FakeBackend()
    session = Session(plan, backend=backend).attach()
    assert backend.program is not None
    return session, backend.program


def key(layout: StructLayout, **values: object) -> bytes:
    return layout.pack(**values)


def test_events_decode_every_member():
    tick = usdt("tick", SIGNED, POINTER, UNSIGNED)
    session, program = session_of((tick,), events=True, event_strings=(1,), string_size=8)
    record = program.layout.record
    assert record is not None and record.size % 8 == 0
    program.emit(record.pack(ts=5, pid=7, tid=8, probe=0, cpu=1, args=(2**64 - 3, 0x1000, 2**63),
                             comm=b"app\0", str0=b"espresso\0"))
    program.emit(record.pack(ts=6, pid=7, tid=8, args=(1, 0x1000, 0), comm=b"app", str0=b"espresso!"))
    program.emit(record.pack(ts=7, pid=7, tid=8, args=(1, 0x1000, 0), errs=0b10, str0=b""))
    session.poll(0)
    first, cut, unreadable = list(session.events)
    assert (first.probe, first.pid, first.tid, first.timestamp_ns, first.cpu, first.comm) == \
        ("app:tick", 7, 8, 5, 1, "app")
    assert first.args == (-3, "espresso", 2**63) and first.truncated == ()
    assert cut.args[1] == "espresso" + CUT_MARK and cut.truncated == (1,)
    assert cut.to_json()["truncated"] == ["arg1"]
    assert unreadable.args[1] is None
    session.close()


def test_counts_keys_numbers_strings_comm_and_failed_reads():
    probe = usdt("query", SIGNED, POINTER)
    fields = (Field("arg", 0), Field("str", 1), Field("comm"), Field("pid"))
    session, program = session_of((probe,), count_by=fields, string_size=8)
    layout = program.layout.count_key
    assert layout is not None
    program.add("counts", key(layout, probe=0, k_arg0=2**64 - 1, k_str_arg1=b"SELECT 1\0", k_comm=b"pg\0", k_pid=9), 4)
    program.add("counts", key(layout, probe=0, k_arg0=3, k_str_arg1=b"UPDATE t SET", k_comm=b"pg", k_pid=9), 2)
    program.add("counts", key(layout, probe=0, k_arg0=3, errs=0b10, k_comm=b"pg", k_pid=9), 1)
    counts = session.counts()
    assert counts is not None and counts.fields == ("probe", "arg0", "str(arg1)", "comm", "pid")
    assert dict(counts) == {
        ("app:query", -1, "SELECT 1", "pg", 9): 4,
        ("app:query", 3, "UPDATE t" + CUT_MARK, "pg", 9): 2,
        ("app:query", 3, None, "pg", 9): 1,
    }
    session.close()
    assert session.counts() == counts  # results stay readable after detach


def test_counts_by_probe_come_from_the_hit_counters():
    a, b = usdt("a"), usdt("b")
    session, program = session_of((a, b), count_by=())
    assert "counts" not in program.maps
    program.hit_stat(0, STAT_HITS, 3)
    program.hit_stat(1, STAT_HITS, 5)
    assert dict(session.counts()) == {("app:a",): 3, ("app:b",): 5}


@pytest.mark.parametrize("hist, values, expected", [
    (HistSpec(Field("arg", 0)), {0: 1, 2: 2, 65: 3}, {0: 1, 2: 2, 65: 3}),
    (HistSpec(Field("arg", 0), "linear", -10, 10, 5), {0: 1, 1: 1, 5: 2}, {0: 1, 1: 1, 5: 2}),
    (HistSpec(Field("arg", 0), "fixed", bounds=(-1, 4, 100)), {0: 2, 3: 1}, {0: 2, 3: 1}),
])
def test_histograms_log2_and_linear(hist, values, expected):
    session, program = session_of((usdt("v", SIGNED),), hist=hist)
    layout = program.layout.hist_key
    for slot, count in values.items():
        program.add("hist", key(layout, probe=0, slot=slot), count)
    result = session.histograms()["app:v"]
    assert result == Histogram(hist.kind, expected, hist.low, hist.high, hist.step, upper_bounds=hist.bounds)
    if hist.kind == "log2":
        assert result.bounds(65)[1] == 0  # the negative bucket lies below zero


def test_histograms_split_by_a_string():
    probe = usdt("req", SIGNED, POINTER)
    session, program = session_of((probe,), hist=HistSpec(Field("arg", 0), by=Field("str", 1)), string_size=16)
    layout = program.layout.hist_key
    program.add("hist", key(layout, probe=0, slot=3, k_str_arg1=b"/cart\0"), 2)
    program.add("hist", key(layout, probe=0, slot=4, k_str_arg1=b"/cart\0"), 1)
    program.add("hist", key(layout, probe=0, slot=4, errs=1), 5)
    hists = session.histograms()
    assert hists[("app:req", "/cart")] == Histogram("log2", {3: 2, 4: 1})
    assert hists[("app:req", None)].total == 5


def test_latency_pair_stats_say_what_was_not_matched():
    start, done = usdt("start", POINTER), usdt("done", POINTER)
    session, program = session_of((start, done), pair=PairSpec(0, 1, Field("arg", 0), Field("arg", 0)),
                                  hist=HistSpec(Field("latency")))
    program.hit_stat(0, STAT_HITS, 10)
    program.hit_stat(1, STAT_HITS, 7)
    program.hit_stat(1, STAT_PAIRED, 7)
    program.hit_stat(1, STAT_UNMATCHED, 2)
    program.hit_stat(1, STAT_READ_ERRORS, 1)
    stats = session.stats()
    assert stats["app:done"].unfinished == 3 and stats["app:done"].unmatched == 2
    words = " ".join(stats["app:done"].losses())
    assert "3 starts without a done/return" in words and "2 done/return hits without a start" in words
    assert "1 argument or string reads failed" in words


def test_function_latency_labels_and_unfinished_calls():
    fn = ResolvedProbe(ProbeRef("uprobe", "/x", "f"), "/x", (Site("/x", 0x10, 0x10),), 6)
    ret = ResolvedProbe(ProbeRef("uretprobe", "/x", "f"), "/x", (Site("/x", 0x10, 0x10),), 0)
    session, program = session_of((fn, ret), function_latency=True, hist=HistSpec(Field("latency")))
    program.hit_stat(0, STAT_HITS, 101)
    program.hit_stat(1, STAT_HITS, 50)  # a return filter kept 50 of the 64 calls that returned
    program.hit_stat(1, STAT_PAIRED, 64)
    stats = session.stats()
    assert set(stats) == {"f:entry", "f"} and stats["f"].unfinished == 37


def test_lost_and_unread_events_add_up_to_what_fired():
    session, program = session_of((usdt("tick", SIGNED),), events=True)
    record = program.layout.record
    for i in range(5):
        program.emit(record.pack(args=(i,)))
    program.hit_stat(0, STAT_HITS, 12)
    program.hit_stat(0, STAT_LOST_EVENTS, 4)
    session.poll(0)
    session.close()
    assert session.delivered == 5 and session.undelivered() == 3  # 12 fired = 5 + 4 lost + 3 unread


def test_stream_yields_events_even_when_none_are_kept():
    session, program = session_of((usdt("tick", SIGNED),), events=True)
    session.keep_events = 0
    for i in range(3):
        program.emit(program.layout.record.pack(args=(i,)))
    got = []
    for event in session.stream(duration=0.05):
        got.append(event.args[0])
    assert got == [0, 1, 2] and not session.events


def test_a_second_attach_is_refused_and_config_carries_the_pid():
    session, program = session_of((usdt("tick"),), pid=os.getpid(), count_by=())
    assert program.config == {0: os.getpid()}
    assert "config.lookup" in program.layout.text and str(os.getpid()) not in program.layout.text
    with pytest.raises(UsageError, match="attached already"):
        session.attach()
    session.close()
    assert program.closed


def test_the_program_text_names_a_shape_not_a_run():
    probe = usdt("tick", SIGNED)
    one = codegen.generate(AttachPlan(TraceRequest((probe.ref,), count_by=(Field("arg", 0),)), (probe,), 100))
    two = codegen.generate(AttachPlan(TraceRequest((probe.ref,), count_by=(Field("arg", 0),)), (probe,), 200))
    assert one.text == two.text


def test_a_session_that_failed_to_attach_cannot_attach_again():
    class Refusing(FakeBackend):
        def load(self, layout):
            raise RuntimeError("no program for you")

    probe = usdt("tick", SIGNED)
    session = Session(AttachPlan(TraceRequest((probe.ref,), count_by=()), (probe,)), backend=Refusing())
    with pytest.raises(RuntimeError):
        session.attach()
    with pytest.raises(UsageError, match="has ended"):
        session.attach()


def test_a_stopped_session_returns_at_once():
    session, program = session_of((usdt("tick", SIGNED),), events=True)
    session.stop()
    assert session.run(duration=30) == "stopped"


def test_fields_outside_the_closed_set_cannot_be_made():
    for bad in (("x; evil", -1), ("arg", -1), ("arg", 12), ("str", True), ("pid", 3)):
        with pytest.raises(UsageError):
            Field(*bad)


def test_forgotten_count_rows_leave_the_kernel_map():
    probe = usdt("query", SIGNED, POINTER)
    session, program = session_of((probe,), count_by=(Field("arg", 0),))
    layout = program.layout.count_key
    program.add("counts", key(layout, probe=0, k_arg0=1), 3)
    program.add("counts", key(layout, probe=0, k_arg0=2), 4)
    assert session.forget_counts([("app:query", 1)]) == 1
    assert dict(session.counts()) == {("app:query", 2): 4}


def test_a_histogram_sum_is_read_back_signed():
    from usdtkit.plan.buckets import SUM_SLOT

    session, program = session_of((usdt("v", SIGNED),), hist=HistSpec(Field("arg", 0), sum=True))
    layout = program.layout.hist_key
    program.add("hist", key(layout, probe=0, slot=65), 2)
    program.add("hist", key(layout, probe=0, slot=SUM_SLOT), (1 << 64) - 7)  # -3 + -4, as the kernel adds
    hist = session.histograms()["app:v"]
    assert hist.sum == -7 and hist.total == 2 and SUM_SLOT not in hist.buckets


def test_histogram_sums_of_other_fields_are_read_back_with_their_signs_and_differenced():
    from usdtkit.collect.deltas import histograms_delta
    from usdtkit.plan.buckets import SUM_SLOT, sum_slot

    probe = usdt("call", SIGNED, POINTER, UNSIGNED)
    spec = HistSpec(Field("arg", 2), by=Field("str", 1), sum=True, sums=(Field("arg", 0),))
    session, program = session_of((probe,), hist=spec, string_size=8)
    layout = program.layout.hist_key
    for slot, value in ((4, 3), (SUM_SLOT, 30), (sum_slot(0), (1 << 64) - 5)):
        program.add("hist", key(layout, probe=0, slot=slot, k_str_arg1=b"f\0"), value)
    before = session.histograms()
    hist = before[("app:call", "f")]
    assert (hist.total, hist.sum, hist.sums) == (3, 30, {"arg0": -5})  # arg0 is signed: it wrapped below zero
    assert hist.to_json()["sums"] == {"arg0": -5} and sum_slot(0) not in hist.buckets
    program.add("hist", key(layout, probe=0, slot=4, k_str_arg1=b"f\0"), 1)
    program.add("hist", key(layout, probe=0, slot=sum_slot(0), k_str_arg1=b"f\0"), 7)
    later = histograms_delta(session.histograms(), before)[("app:call", "f")]
    assert (later.total, later.sums) == (1, {"arg0": 7})
