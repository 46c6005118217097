"""Results as text for terminals: readable values, escaped keys, aligned tables (a histogram draws
itself: :meth:`usdtkit.collect.results.Histogram.render`)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, List, Optional, TextIO

if TYPE_CHECKING:  # pragma: no cover
    from ..collect.results import Counts


def format_value(value: int, unit: str = "") -> str:
    """``value`` with its unit made readable: nanoseconds as ns/us/ms/s, else the plain number."""
    if unit != "ns":
        return f"{value}{unit}"
    for suffix, size in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if value >= size:
            return f"{value / size:.3g} {suffix}"
    return f"{value} ns"


def printable(text: str) -> str:
    """``text`` with control characters escaped: data from a traced process must not drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def key_text(value: object) -> str:
    """A key's value for a terminal: ``?`` where its read failed (``None``)."""
    return "?" if value is None else printable(str(value))


def render_table(header: List[str], rows: List[List[str]], width: Optional[int] = None) -> str:
    """``rows`` under ``header``, each column as wide as its widest cell, two spaces apart.  Given a
    terminal ``width``, the widest columns give way (cells cut with ``~``) until the table fits or no
    column is wider than :data:`MIN_CUT` (a pipe gets whole lines: no width)."""
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    if width is not None:
        over = sum(widths) + 2 * (len(widths) - 1) - width
        while over > 0:
            widest = max(range(len(widths)), key=lambda i: widths[i])
            if widths[widest] <= MIN_CUT:
                break
            cut = min(over, widths[widest] - MIN_CUT)
            widths[widest] -= cut
            over -= cut

    def cell(text: str, w: int) -> str:
        return (text if len(text) <= w else text[:w - 1] + "~").ljust(w)

    lines = ["  ".join(cell(h, w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(cell(c, w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


MIN_CUT = 12  # columns are not cut below this many characters


def terminal_width(stream: TextIO) -> Optional[int]:
    """The width of the terminal ``stream`` writes to, or None when it is not a terminal."""
    try:
        if not stream.isatty():
            return None
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return None


def render_counts(counts: "Counts", limit: Optional[int] = 50, width: Optional[int] = None) -> str:
    """An aligned table of the largest counts (fitted to ``width`` when given)."""
    rows = [[*(key_text(k) for k in key), str(value)] for key, value in counts.most_common(limit)]
    if not rows:
        return "(no hits)"
    return render_table([*counts.fields, "count"], rows, width)
