"""One trace's results kept by several programs, summed into one reading.

A command that declares its probes at run time is traced by one program per declaration that needed
new code (:mod:`usdtkit.tracing.late`), each counting the probes it attached.  Counters only add up, so
their sum is the trace's: stats per probe label, counts per key, histograms per label and bucket (and
their sums).  The same label in two programs is the same probe attached in two objects (a provider
loaded by two processes), and its numbers add like those of two call sites.
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Dict, Iterable, Optional

from .results import Counts, Histogram, ProbeStats


def merge_stats(readings: Iterable[Dict[str, ProbeStats]]) -> Dict[str, ProbeStats]:
    out: Dict[str, ProbeStats] = {}
    for reading in readings:
        for label, stats in reading.items():
            before = out.get(label)
            out[label] = stats if before is None else ProbeStats(
                **{f.name: getattr(before, f.name) + getattr(stats, f.name) for f in fields(ProbeStats)})
    return out


def merge_counts(readings: Iterable[Optional[Counts]]) -> Optional[Counts]:
    """The counts of every reading by key (None when no reading has counts)."""
    merged: Optional[Counts] = None
    items: Dict[tuple, int] = {}
    for counts in readings:
        if counts is None:
            continue
        if merged is None:
            merged = counts
        for key, value in counts.items():
            items[key] = items.get(key, 0) + value
    return None if merged is None else Counts(merged.fields[1:], items)


def merge_histograms(readings: Iterable[Dict[object, Histogram]]) -> Dict[object, Histogram]:
    out: Dict[object, Histogram] = {}
    for reading in readings:
        for label, hist in reading.items():
            before = out.get(label)
            if before is None:
                out[label] = hist
                continue
            buckets = dict(before.buckets)
            for index, count in hist.buckets.items():
                buckets[index] = buckets.get(index, 0) + count
            total = None if before.sum is None or hist.sum is None else before.sum + hist.sum
            out[label] = replace(before, buckets=buckets, sum=total)
    return out
