"""Targets beyond one PID: every process that maps a binary, and user stacks (symbolised, folded)."""
from __future__ import annotations

import time

import pytest

from usdtkit.tracing.api import trace


@pytest.mark.bpf
def test_without_a_pid_every_process_mapping_the_binary_is_traced(build_c, processes):
    binary = build_c("usdt_args.c", "-O2")
    targets = [processes([binary, "6"]) for _ in range(3)]
    with trace(f"usdt:{binary}:demo:guarded", count_by=["pid"]) as session:
        for target in targets:
            target.stdin.write(b"g")
            target.stdin.flush()
        for target in targets:
            assert target.wait(timeout=20) == 0
        session.run(duration=0.2)
        counts = session.counts()
    assert dict(counts) == {("demo:guarded", t.pid): 6 for t in targets}


@pytest.mark.bpf
def test_user_stacks_are_symbolised_and_folded(build_c, processes):
    binary = build_c("usdt_forms.c", "-O1", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls")
    target = processes([binary, "5"])
    with trace(f"usdt:{binary}:demo:mem", pid=target.pid, count_by=["ustack"], stacks=True) as session:
        target.stdin.write(b"g")
        target.stdin.flush()
        deadline = time.time() + 20
        while len(session.events) < 5 and time.time() < deadline:
            session.poll(0.1)
        counts = session.counts()  # read while the process lives: symbols come from its maps
        events = list(session.events)
    (label, folded), = counts.keys()
    assert counts[(label, folded)] == 5
    frames = folded.split(";")
    # root first, innermost last; observe() is a leaf without a frame of its own, so (as with every
    # frame-pointer unwinder) its caller's frame shows the caller of main
    assert frames[-1] == "observe" and "__libc_start_call_main" in frames, folded
    assert events[0].stack[0].startswith("observe+0x")
