"""Plain Python results of a trace: events, counts, histograms, loss statistics.

They are independent of bcc: the session copies kernel maps into these objects, so they can be
compared, printed, serialised (``to_json``) and kept after the trace ends.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

from ..plan import buckets as bucketing


@dataclass(slots=True)
class Event:
    """One probe hit copied to user space.

    ``args`` holds the argument values in order (signed where the spec says signed; ``None`` where a
    memory read failed); string arguments read with ``strings=`` are ``str``.  Treat it as read-only
    (it is a plain slotted class because events are built by the hundred thousand per second).  ``latency_ns`` is set for
    latency traces, ``retval`` for uretprobes, ``stack`` when stacks were
    asked for: its frames as names (``function+0xoff [module]``), innermost first.  ``truncated`` lists
    the indexes of string arguments longer than the bytes kept (their text ends with ``…``).
    """

    probe: str
    pid: int
    tid: int
    timestamp_ns: int
    cpu: int
    comm: str
    args: Tuple[object, ...]
    retval: Optional[int] = None
    latency_ns: Optional[int] = None
    stack: Optional[Tuple[str, ...]] = None
    truncated: Tuple[int, ...] = ()

    def to_json(self) -> dict:
        out = {"probe": self.probe, "pid": self.pid, "tid": self.tid, "timestamp_ns": self.timestamp_ns,
               "cpu": self.cpu, "comm": self.comm, "args": list(self.args)}
        if self.retval is not None:
            out["retval"] = self.retval
        if self.latency_ns is not None:
            out["latency_ns"] = self.latency_ns
        if self.stack is not None:
            out["stack"] = list(self.stack)
        if self.truncated:
            out["truncated"] = [f"arg{i}" for i in self.truncated]
        return out


@dataclass(frozen=True)
class ProbeStats:
    """In-kernel counters of one probe: hits after filters and everything that could not be kept."""

    hits: int = 0
    lost_events: int = 0
    lost_keys: int = 0
    read_errors: int = 0
    unmatched: int = 0  # latency: a done/return without its start (started before the trace, evicted)
    unfinished: int = 0  # latency: starts whose done/return was never counted (see losses())

    def to_json(self) -> dict:
        return {"hits": self.hits, "lost_events": self.lost_events, "lost_keys": self.lost_keys,
                "read_errors": self.read_errors, "unmatched": self.unmatched, "unfinished": self.unfinished}

    def losses(self) -> List[str]:
        """Each kind of loss, said in words (empty when nothing was lost)."""
        said = (
            (self.lost_events, "events lost (ring buffer full; try a larger buffer)"),
            (self.lost_keys, "keys lost (map full)"),
            (self.read_errors, "argument or string reads failed (shown as ?)"),
            (self.unmatched, "done/return hits without a start (started before the trace, or evicted)"),
            (self.unfinished, "starts without a done/return (still running at the end, filtered out, or "
                              "returns the kernel did not probe past 64 nested calls)"),
        )
        return [f"{n} {what}" for n, what in said if n]


class Counts(Mapping):
    """Counts by key: a mapping from a key tuple (probe label first, then the chosen fields) to a count."""

    def __init__(self, fields: Tuple[str, ...], items: Dict[Tuple, int]) -> None:
        self.fields = ("probe",) + tuple(fields)
        self._items = dict(items)

    def __getitem__(self, key: Tuple) -> int:
        return self._items[key]

    def __iter__(self) -> Iterator[Tuple]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def total(self) -> int:
        return sum(self._items.values())

    def most_common(self, n: Optional[int] = None) -> List[Tuple[Tuple, int]]:
        ranked = sorted(self._items.items(), key=lambda kv: (-kv[1], repr(kv[0])))
        return ranked if n is None else ranked[:n]

    def to_json(self) -> dict:
        return {"fields": list(self.fields),
                "counts": [{"key": list(k), "count": v} for k, v in self.most_common()]}

    def __repr__(self) -> str:
        return f"Counts({self.fields}, {self._items!r})"


def _human(value: int) -> str:
    for unit, size in (("P", 1 << 50), ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


@dataclass
class Histogram:
    """A histogram of one probe: ``buckets`` maps a bucket index to a count.

    Bucket numbers are those of :mod:`usdtkit.plan.buckets` (log2, with one bucket for negative values,
    or linear between ``low`` and ``high``).
    """

    kind: str
    buckets: Dict[int, int] = field(default_factory=dict)
    low: int = 0
    high: int = 0
    step: int = 1
    unit: str = ""
    upper_bounds: Tuple[int, ...] = ()  # fixed histograms: the inclusive upper bound of each bucket
    sum: Optional[int] = None  # the sum of the values, where the trace kept it (HistSpec(sum=True))
    sums: Dict[str, int] = field(default_factory=dict)  # other fields added up, by name (HistSpec(sums=...))

    def __getitem__(self, index: int) -> int:
        return self.buckets.get(index, 0)

    @property
    def total(self) -> int:
        return sum(self.buckets.values())

    NEGATIVE = bucketing.LOG2_NEGATIVE

    def bounds(self, index: int) -> Tuple[int, int]:
        """The half-open value range ``[lo, hi)`` of bucket ``index``."""
        if self.kind == "log2":
            return bucketing.log2_bounds(index)
        if self.kind == "fixed":
            return bucketing.fixed_bounds(index, self.upper_bounds)
        return bucketing.linear_bounds(index, self.low, self.high, self.step)

    def bucket_of(self, value: int) -> int:
        if self.kind == "log2":
            return bucketing.log2_bucket(value)
        if self.kind == "fixed":
            return bucketing.fixed_bucket(value, self.upper_bounds)
        return bucketing.linear_bucket(value, self.low, self.high, self.step)

    def ordered(self) -> List[int]:
        """Bucket indexes in value order (the negative log2 bucket first)."""
        return sorted(self.buckets, key=lambda i: self.bounds(i)[0])

    def percentile(self, p: float) -> int:
        """Upper bound of the bucket holding the ``p``-th percentile (0-100); 0 when empty."""
        if not 0 <= p <= 100:
            raise ValueError("percentile must be between 0 and 100")
        total = self.total
        if not total:
            return 0
        rank = max(1, math.ceil(total * p / 100))
        seen = 0
        order = self.ordered()
        for index in order:
            seen += self.buckets[index]
            if seen >= rank:
                return self.bounds(index)[1]
        return self.bounds(order[-1])[1]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self.kind, self.low, self.high, self.step, self.upper_bounds) == (
            other.kind, other.low, other.high, other.step, other.upper_bounds) and {
            k: v for k, v in self.buckets.items() if v} == {k: v for k, v in other.buckets.items() if v}

    def to_json(self) -> dict:
        extra: Dict[str, object] = {} if self.sum is None else {"sum": self.sum}
        if self.sums:
            extra["sums"] = dict(self.sums)
        return {"kind": self.kind, "unit": self.unit, **extra,
                "buckets": [{"low": self.bounds(i)[0], "high": self.bounds(i)[1], "count": self.buckets[i]}
                            for i in self.ordered() if self.buckets[i]]}

    def render(self, width: int = 40) -> str:
        """A bcc/bpftrace style text histogram: rows ``[lo, hi)  count |@@@@|`` from the first to the last
        non-empty bucket."""
        used = [i for i in self.ordered() if self.buckets[i]]
        if not used:
            return "(no values)"
        peak = max(self.buckets[i] for i in used)
        rows: List[str] = []
        labels = []
        negative = [i for i in used if self.kind == "log2" and i == self.NEGATIVE]
        positive = [i for i in used if i not in negative]
        span = list(range(positive[0], positive[-1] + 1)) if positive else []
        for index in negative + span:
            lo, hi = self.bounds(index)
            if lo <= -(1 << 63):
                label = f"(..., {_human(hi)})"
            elif hi >= 1 << 64:
                label = f"[{_human(lo)}, ...)"
            else:
                label = f"[{_human(lo)}, {_human(hi)})"
            labels.append((label, self.buckets.get(index, 0)))
        label_width = max(len(label) for label, _ in labels)
        count_width = max(len(str(count)) for _, count in labels)
        for label, count in labels:
            bar = "@" * (round(count * width / peak) if peak else 0)
            rows.append(f"{label:<{label_width}} {count:>{count_width}} |{bar:<{width}}|")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.render()
