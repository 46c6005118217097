"""Text rendering of results for terminals: bcc/bpftrace-style histograms and count tables."""
from __future__ import annotations

from typing import TYPE_CHECKING, List

if TYPE_CHECKING:  # pragma: no cover
    from .results import Counts, Histogram


def _human(value: int) -> str:
    for unit, size in (("P", 1 << 50), ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def format_value(value: int, unit: str = "") -> str:
    """``value`` with its unit made readable: nanoseconds as ns/us/ms/s, else the plain number."""
    if unit != "ns":
        return f"{value}{unit}"
    for suffix, size in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if value >= size:
            return f"{value / size:.3g} {suffix}"
    return f"{value} ns"


def render_histogram(hist: "Histogram", width: int = 40) -> str:
    """Rows ``[lo, hi)  count |@@@@|`` from the first to the last non-empty bucket."""
    used = [i for i in hist.ordered() if hist.buckets[i]]
    if not used:
        return "(no values)"
    peak = max(hist.buckets[i] for i in used)
    rows: List[str] = []
    labels = []
    negative = [i for i in used if hist.kind == "log2" and i == hist.NEGATIVE]
    positive = [i for i in used if i not in negative]
    span = list(range(positive[0], positive[-1] + 1)) if positive else []
    for index in negative + span:
        lo, hi = hist.bounds(index)
        if lo <= -(1 << 63):
            label = f"(..., {_human(hi)})"
        elif hi >= 1 << 64:
            label = f"[{_human(lo)}, ...)"
        else:
            label = f"[{_human(lo)}, {_human(hi)})"
        labels.append((label, hist.buckets.get(index, 0)))
    label_width = max(len(label) for label, _ in labels)
    count_width = max(len(str(count)) for _, count in labels)
    for label, count in labels:
        bar = "@" * (round(count * width / peak) if peak else 0)
        rows.append(f"{label:<{label_width}} {count:>{count_width}} |{bar:<{width}}|")
    return "\n".join(rows)


def printable(text: str) -> str:
    """``text`` with control characters escaped: data from a traced process must not drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def key_text(value: object) -> str:
    """A key's value for a terminal: ``?`` where its read failed (``None``)."""
    return "?" if value is None else printable(str(value))


def render_table(header: List[str], rows: List[List[str]]) -> str:
    """``rows`` under ``header``, each column as wide as its widest cell, two spaces apart."""
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def render_counts(counts: "Counts", limit: int = 50) -> str:
    """An aligned table of the largest counts."""
    rows = [[*(key_text(k) for k in key), str(value)] for key, value in counts.most_common(limit)]
    if not rows:
        return "(no hits)"
    return render_table([*counts.fields, "count"], rows)
