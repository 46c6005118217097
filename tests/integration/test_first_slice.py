"""The first real slice: a sys/sdt.h probe fired a known number of times with known arguments,
attached through usdtkit's own path (discovery, code generation, bcc, perf uprobes), and the exact
counts and values that came back from the kernel."""
from __future__ import annotations

import pytest

from usdtkit.tracing.api import trace

N = 25


@pytest.fixture(params=["ringbuf", "perfbuf"])
def event_transport(request, monkeypatch):
    """Both kernel paths: ring buffer and uprobe_multi links (new kernels), and perf buffer with one
    perf event per site (what kernels before 5.8 and 6.6 get)."""
    from usdtkit.bpf import capabilities

    if request.param == "perfbuf":
        monkeypatch.setenv("USDTKIT_NO_RINGBUF", "1")
        monkeypatch.setenv("USDTKIT_NO_UPROBE_MULTI", "1")
    capabilities.detect.cache_clear()
    yield request.param
    capabilities.detect.cache_clear()


@pytest.mark.bpf
def test_usdt_counts_and_arguments_are_exact(build_c, processes, event_transport):
    binary = build_c("usdt_args.c", "-O2")
    target = processes([binary, str(N)])
    with trace(f"usdt:{binary}:demo:args", pid=target.pid, strings=["arg5"], count_by=["arg4"]) as session:
        target.stdin.write(b"g")
        target.stdin.flush()
        session.run(duration=20)  # ends early: the session notices the target's exit
        events = list(session.events)
        assert session.uses_ringbuf == (event_transport == "ringbuf")
        assert (session._program.links > 0) == (event_transport == "ringbuf")  # noqa: SLF001 (which path ran)
        stats = session.stats()
        counts = session.counts()
    assert target.wait(timeout=10) == 0
    assert session.target_exited
    assert stats["demo:args"].hits == N
    assert stats["demo:args"].lost_events == 0
    assert len(events) == N
    for i, event in enumerate(events):
        assert event.pid == target.pid
        assert event.args == (
            -i,  # int8, negative: sign extension from one byte
            60000 + i,  # uint16 above the int16 range
            -100000 * i,  # int32
            (0xFFFFFFFFFFFFFFF0 + i) % 2**64,  # uint64 near 2**64, wrapping like C
            i,  # int64
            "h\u00e9llo \u2713",  # a UTF-8 string read through a pointer
        )
    assert counts.total() == N
    assert set(counts) == {("demo:args", i) for i in range(N)}


@pytest.mark.bpf
def test_iterating_over_events(build_c, processes):
    binary = build_c("usdt_args.c", "-O2")
    target = processes([binary, "8"])
    with trace(f"usdt:{binary}:demo:tick", pid=target.pid) as session:
        target.stdin.write(b"g")
        target.stdin.flush()
        values = [event.args[0] for event in session]  # ends when the target exits
    assert values == [i if i % 2 else i * 1000 for i in range(8)]
