"""What changed between two readings of cumulative results: counts, histograms and stats per interval.

The kernel's maps only grow during a trace; a per-interval view (``-i`` in the CLI, like bcc's tools)
is the difference of two readings, taken in user space so that nothing counted between a read and a
clear is ever lost.
"""
from __future__ import annotations

from typing import Dict, Optional

from .results import Counts, Histogram, ProbeStats


def counts_delta(current: Optional[Counts], previous: Optional[Counts]) -> Optional[Counts]:
    if current is None or previous is None:
        return current
    items = {key: value - previous.get(key, 0) for key, value in current.items()}
    return Counts(current.fields[1:], {k: v for k, v in items.items() if v})


def histograms_delta(current: Dict[object, Histogram], previous: Dict[object, Histogram]) -> Dict[object, Histogram]:
    out: Dict[object, Histogram] = {}
    for label, hist in current.items():
        before = previous.get(label)
        buckets = {i: n - (before.buckets.get(i, 0) if before else 0) for i, n in hist.buckets.items()}
        buckets = {i: n for i, n in buckets.items() if n}
        if buckets:
            total = None if hist.sum is None else hist.sum - ((before.sum or 0) if before else 0)
            sums = {name: value - (before.sums.get(name, 0) if before else 0) for name, value in hist.sums.items()}
            out[label] = Histogram(hist.kind, buckets, hist.low, hist.high, hist.step, hist.unit, hist.upper_bounds,
                                   total, sums)
    return out


def stats_delta(current: Dict[str, ProbeStats], previous: Dict[str, ProbeStats]) -> Dict[str, ProbeStats]:
    out: Dict[str, ProbeStats] = {}
    for label, stats in current.items():
        before = previous.get(label)
        if before is None:
            out[label] = stats
            continue
        now, then = stats.to_json(), before.to_json()
        out[label] = ProbeStats(**{k: max(0, v - then[k]) for k, v in now.items()})
    return out
