"""Profile rows of ``usdtkit pycalls`` from what the kernel keeps per function (no root): histograms of
call times with their sums, or returns counted; sorting, the cut at --top, JSON and the table."""
from __future__ import annotations

from usdtkit.cli.pycalls_run import render_calls
from usdtkit.collect.calls import FunctionCalls, GcPauses, counted_rows, timed_rows, top
from usdtkit.collect.results import Counts, Histogram

PROBE = "pycalls:function__return"


def timed(buckets, total, self_ns):
    return Histogram("log2", dict(buckets), unit="", sum=total, sums={"arg5": self_ns})


def test_timed_rows_give_calls_total_self_and_percentile_buckets_costliest_first():
    hists = {
        (PROBE, "app:fast", "/app.py", 3): timed({10: 99, 20: 1}, 99 * 600 + 600_000, 99 * 600 + 600_000),
        (PROBE, "app:slow", "/app.py", 9): timed({24: 4}, 4 * 10_000_000, 1_000_000),
    }
    slow, fast = timed_rows(hists, "arg5", by_thread=False)
    assert slow == FunctionCalls("app:slow", "/app.py", 9, 4, 40_000_000, 1_000_000, 1 << 24, 1 << 24)
    # 99 calls under 1 us and one over 0.5 ms: the p50 bucket ends at 1024 ns, the p99 one too
    assert (fast.calls, fast.p50_ns, fast.p99_ns) == (100, 1 << 10, 1 << 10)
    assert slow.to_json() == {"function": "app:slow", "file": "/app.py", "line": 9, "calls": 4,
                              "total_ns": 40_000_000, "self_ns": 1_000_000, "p50_ns": 1 << 24, "p99_ns": 1 << 24}


def test_rows_split_by_thread_and_unreadable_keys():
    hists = {(PROBE, "app:f", "/app.py", 3, 11): timed({5: 1}, 20, 20),
             (PROBE, None, "/app.py", 3, 12): timed({5: 1}, 20, 20)}
    rows = timed_rows(hists, "arg5", by_thread=True)
    assert [(r.function, r.tid) for r in rows] == [(None, 12), ("app:f", 11)]  # equal totals: by name
    assert rows[1].to_json()["tid"] == 11
    text = render_calls(rows, by_thread=True, timed=True).splitlines()
    assert text[0].split() == ["function", "file:line", "tid", "calls", "total", "self", "mean", "p50<=", "p99<="]
    assert text[1].split()[:4] == ["?", "/app.py:3", "12", "1"]


def test_counted_rows_are_by_return_line_without_times():
    counts = Counts(("str(arg1)", "str(arg0)", "arg2"), {("python:function__return", "leaf", "/s.py", 4): 20,
                                                           ("python:function__return", "main", "/s.py", 9): 1})
    rows = counted_rows(counts, by_thread=False)
    assert [(r.function, r.calls) for r in rows] == [("leaf", 20), ("main", 1)]
    assert rows[0].to_json() == {"function": "leaf", "file": "/s.py", "return_line": 4, "calls": 20}
    assert render_calls(rows, False, False).splitlines()[0].split() == ["function", "file:return_line", "calls"]
    assert render_calls([], False, False) == "(no calls)"


def test_top_keeps_the_first_rows_and_says_how_many_more():
    rows = [FunctionCalls(f"f{i}", "/a.py", i, 1) for i in range(5)]
    assert top(rows, 2) == (rows[:2], 3)
    assert top(rows, 0) == (rows, 0) and top(rows, 9) == (rows, 0)


def test_gc_pauses_add_up_every_histogram():
    hists = {"python:gc__done": Histogram("log2", {20: 3}, sum=3_000_000, unit="ns")}
    assert GcPauses.from_histograms(hists).to_json() == {"collections": 3, "total_ns": 3_000_000}
    assert GcPauses.from_histograms({}) == GcPauses(0, 0)
