"""Python call paths from usdtkit.instrument's entry and return events: the input of a flame graph, and
the same per-function statistics the kernel keeps for ``usdtkit pycalls``.

``pycalls:function__entry(function, file, line, depth)`` fires as an instrumented call starts, at the
depth its thread's stack of instrumented frames has (0: the outermost one seen since the hooks went on);
``function__return(function, file, line, depth, total_ns, self_ns)`` as it ends, at the same depth.
Per thread, the names entered at depths 0..d-1 are the path to a return at depth d.  A depth whose
entry came before this trace (the hooks were already on for another tracer) is named
:data:`UNSEEN`.  Each return adds its self time to its path, so a frame of the flame graph is as wide
as the time spent in it and below it.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from ..plan import buckets as bucketing
from .results import Event, Histogram

UNSEEN = "[entered before the trace]"
MAX_DEPTH = 10_000  # deeper than Python's recursion limit allows by default: the value is not a depth
Stack = Tuple[str, ...]


class CallPaths:
    """Fed every entry and return event (``feed``); gives self time per path (``stacks``) and, per
    function, a log2 histogram of call times with their total and self sums (``histograms``)."""

    def __init__(self, by_thread: bool = False, self_name: str = "arg5") -> None:
        self.by_thread = by_thread
        self._self_name = self_name
        self._threads: Dict[Tuple[int, int], List[str]] = {}
        self._self_ns: Dict[Stack, int] = {}
        self._hists: Dict[Tuple, Histogram] = {}

    def feed(self, event: Event) -> None:
        args = event.args
        if len(args) < 4 or not isinstance(args[3], int) or not 0 <= args[3] <= MAX_DEPTH:
            return  # a depth that could not be read (or that no real stack has): nowhere to put it
        name = args[0] if isinstance(args[0], str) else "?"
        depth = args[3]
        stack = self._threads.setdefault((event.pid, event.tid), [])
        if len(stack) < depth:
            stack.extend([UNSEEN] * (depth - len(stack)))
        del stack[depth:]
        if len(args) < 6:  # an entry
            stack.append(name)
            return
        total_ns, self_ns = args[4], args[5]
        if not isinstance(total_ns, int) or not isinstance(self_ns, int):
            return
        path = (*stack, name)
        self._self_ns[path] = self._self_ns.get(path, 0) + self_ns
        label = (event.probe, args[0], args[1], args[2]) + ((event.tid,) if self.by_thread else ())
        hist = self._hists.get(label)
        if hist is None:
            hist = self._hists[label] = Histogram("log2", {}, unit="ns", sum=0, sums={self._self_name: 0})
        index = bucketing.log2_bucket(total_ns)
        hist.buckets[index] = hist.buckets.get(index, 0) + 1
        hist.sum = (hist.sum or 0) + total_ns
        hist.sums[self._self_name] += self_ns

    def stacks(self) -> Dict[Stack, int]:
        """Self nanoseconds per call path, root first."""
        return dict(self._self_ns)

    def histograms(self) -> Dict[object, Histogram]:
        """Per function (and thread), keyed as the kernel's: ``(probe, function, file, line[, tid])``."""
        return dict(self._hists)
