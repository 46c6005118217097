"""The kernel's run-time counters of a session's programs, while run-time statistics are on."""
from __future__ import annotations

import os

import pytest

from usdtkit.bpf.prog_stats import close_stats, enable_run_time_stats
from usdtkit.tracing.api import trace

HELLO = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "demo_apps", "build", "hello_usdt")


@pytest.mark.bpf
def test_run_time_is_counted_while_stats_are_on():
    stats = enable_run_time_stats()
    assert stats is not None
    try:
        with trace("usdt::hello:tick", command=[HELLO, "6"], events=False, count_by=()) as session:
            session.run(duration=30)
            run_ns, runs = session.run_stats()
        assert runs == 6 and run_ns > 0
        assert session.run_stats() == (0, 0)  # detached
    finally:
        close_stats(stats)
    with trace("usdt::hello:tick", command=[HELLO, "3"], events=False, count_by=()) as session:
        session.run(duration=30)
        assert session.run_stats() == (0, 0)  # off again: nothing is counted


@pytest.mark.bpf
def test_forgotten_rows_leave_the_kernel_map():
    with trace("usdt::hello:tick", command=[HELLO, "8"], events=False, count_by=["arg0"]) as session:
        session.run(duration=30)
        assert len(session.counts()) == 8
        assert session.forget_counts([("hello:tick", i) for i in (1, 2, 3, 99)]) == 3
        assert sorted(k[1] for k in session.counts()) == [4, 5, 6, 7, 8]
