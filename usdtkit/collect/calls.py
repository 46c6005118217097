"""Per-function call statistics of a Python program, from what the kernel kept for each function.

A profile row is one function (``module:qualname``, its file and first line, and with ``by_thread``
the thread): how often it returned, and, where the program measured its own calls (usdtkit's
``pycalls`` probes), the time they took in all (``total_ns``), the part spent in the function itself
rather than in instrumented callees (``self_ns``), and the 50th and 99th percentiles of one call's
time.  The kernel keeps one log2 histogram of call times per function with the two sums beside it,
so a percentile is the upper bound of the power-of-two bucket that holds it: ``p99_ns`` 16777216
reads "99% of calls took less than 16.8 ms".

Where only CPython's own ``python:function__return`` fires, the kernel counts returns per function
and there are no times: such rows carry ``calls`` only.  That probe gives the function's bare name
(no module or class) and the line it returns from, not its first line: a row is one return line of a
function (``return_line``), which tells same-named methods of one file apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .results import Counts, Histogram


@dataclass(frozen=True)
class FunctionCalls:
    """One function's calls (``None`` where a string or number could not be read from the process)."""

    function: Optional[str]
    file: Optional[str]
    line: Optional[int]
    calls: int
    total_ns: Optional[int] = None  # None: the source measured no times
    self_ns: Optional[int] = None
    p50_ns: Optional[int] = None  # upper bound of the log2 bucket holding the median call
    p99_ns: Optional[int] = None
    tid: Optional[int] = None  # set when split by thread
    at_return: bool = False  # ``line`` is where the function returned (CPython's own probe), not its first

    @property
    def timed(self) -> bool:
        return self.total_ns is not None

    def to_json(self) -> dict:
        out: Dict[str, object] = {"function": self.function, "file": self.file,
                                  "return_line" if self.at_return else "line": self.line}
        if self.tid is not None:
            out["tid"] = self.tid
        out["calls"] = self.calls
        if self.timed:
            out.update(total_ns=self.total_ns, self_ns=self.self_ns, p50_ns=self.p50_ns, p99_ns=self.p99_ns)
        return out


def _split(key: Tuple, by_thread: bool) -> Tuple[Optional[str], Optional[str], Optional[int], Optional[int]]:
    """``(function, file, line, tid)`` from a key ``(probe, function, file, line[, tid])``."""
    function, file, line = key[1:4]
    tid = key[4] if by_thread else None
    return function, file, line, tid  # type: ignore[return-value]


def timed_rows(hists: Dict[object, Histogram], self_field: str, by_thread: bool) -> List[FunctionCalls]:
    """Rows from per-function histograms of call times that kept their sum and the sum of
    ``self_field``, slowest in all first."""
    rows = []
    for key, hist in hists.items():
        function, file, line, tid = _split(key, by_thread)  # type: ignore[arg-type]
        rows.append(FunctionCalls(function, file, line, hist.total, hist.sum or 0, hist.sums.get(self_field, 0),
                                  hist.percentile(50), hist.percentile(99), tid))
    return sorted(rows, key=lambda r: (-(r.total_ns or 0), -r.calls, _order(r)))


def counted_rows(counts: Optional[Counts], by_thread: bool) -> List[FunctionCalls]:
    """Rows from returns counted per function and return line, most called first."""
    rows = []
    for key, n in (counts or {}).items():
        function, file, line, tid = _split(key, by_thread)
        rows.append(FunctionCalls(function, file, line, n, tid=tid, at_return=True))
    return sorted(rows, key=lambda r: (-r.calls, _order(r)))


def _order(row: FunctionCalls) -> Tuple[str, str, int, int]:
    """Ties broken by name, file, line and thread, so that equal runs print alike."""
    return (row.function or "", row.file or "", row.line or 0, row.tid or 0)


@dataclass(frozen=True)
class GcPauses:
    """Garbage collections seen (``python:gc__start`` to ``gc__done`` on one thread) and their time."""

    collections: int
    total_ns: int

    @classmethod
    def from_histograms(cls, hists: Dict[object, Histogram]) -> "GcPauses":
        return cls(sum(h.total for h in hists.values()), sum(h.sum or 0 for h in hists.values()))

    def to_json(self) -> dict:
        return {"collections": self.collections, "total_ns": self.total_ns}


def top(rows: Sequence[FunctionCalls], limit: int) -> Tuple[List[FunctionCalls], int]:
    """The first ``limit`` rows (all for 0) and how many were left out."""
    if not limit or len(rows) <= limit:
        return list(rows), 0
    return list(rows[:limit]), len(rows) - limit
