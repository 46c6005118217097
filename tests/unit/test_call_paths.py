"""Call paths from entry and return events, without a kernel: paths per thread, frames entered before
the trace, reads that failed, and rows equal to what the kernel's histograms would hold."""
from __future__ import annotations

from usdtkit.collect.call_paths import UNSEEN, CallPaths
from usdtkit.collect.results import Event

R = "pycalls:function__return"


def entry(tid: int, name: str, depth: int) -> Event:
    return Event("pycalls:function__entry", 1, tid, 0, 0, "c", (name, "f.py", 1, depth))


def ret(tid: int, name: str, depth: int, total: int, own: int) -> Event:
    return Event(R, 1, tid, 0, 0, "c", (name, "f.py", 1, depth, total, own))


def test_paths_per_thread_and_frames_entered_before_the_trace():
    paths = CallPaths()
    for event in (entry(1, "main", 0), entry(1, "a", 1), entry(2, "b", 0), ret(1, "a", 1, 30, 30),
                  ret(2, "b", 0, 7, 7), entry(1, "a", 1), ret(1, "a", 1, 10, 10), ret(1, "main", 0, 50, 10),
                  ret(3, "late", 2, 5, 5), ret(3, "x", 1, 9, 4), Event(R, 1, 4, 0, 0, "c", ("y", "f", 1, None, 1, 1))):
        paths.feed(event)
    assert paths.stacks() == {("main", "a"): 40, ("b",): 7, ("main",): 10, (UNSEEN, UNSEEN, "late"): 5,
                              (UNSEEN, "x"): 4}
    hists = paths.histograms()
    a = hists[(R, "a", "f.py", 1)]
    assert (a.total, a.sum, a.sums["arg5"]) == (2, 40, 40)


def test_rows_split_by_thread():
    paths = CallPaths(by_thread=True)
    for event in (entry(1, "a", 0), ret(1, "a", 0, 3, 3), entry(2, "a", 0), ret(2, "a", 0, 4, 4)):
        paths.feed(event)
    assert set(paths.histograms()) == {(R, "a", "f.py", 1, 1), (R, "a", "f.py", 1, 2)}


def test_a_depth_no_stack_has_is_ignored():
    paths = CallPaths()
    for depth in (-1, 10**12):
        paths.feed(ret(1, "x", depth, 1, 1))
    assert paths.stacks() == {} and paths.histograms() == {}
