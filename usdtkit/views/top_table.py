"""The table of ``usdtkit top``: hit rates per probe and process, latency percentiles where timed.

Pure functions from readings to lines, so the same table serves the live screen (sized to the
terminal) and plain text (a pipe, a log), and is tested without a terminal.  Each refresh compares two
cumulative readings: the rate is what changed over the seconds between them, the total is what was
counted since attaching, and p50/p99 come from the latencies that ended in that interval.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .text import format_value, printable
from ..collect.results import Counts, Histogram

RowKey = Tuple[str, object]  # (probe label, pid)


@dataclass
class TopRow:
    probe: str
    pid: object
    comm: str
    rate: float      # hits per second over the last interval
    total: int       # hits since attaching
    p50: Optional[int] = None  # ns, of the latencies that ended in the last interval
    p99: Optional[int] = None

    def to_json(self) -> dict:
        return {"probe": self.probe, "pid": self.pid, "comm": self.comm, "rate": round(self.rate, 3),
                "total": self.total, "p50_ns": self.p50, "p99_ns": self.p99}


def rows(now: Optional[Counts], before: Optional[Counts], seconds: float,
         latencies: Dict[object, Histogram] = None) -> List[TopRow]:
    """One row per (probe, pid) counted so far, most hits per second first.  ``now`` and ``before`` are
    counts keyed by probe, pid and comm; ``latencies`` (the last interval's) are keyed by (probe, pid)."""
    totals: Dict[RowKey, List] = {}
    for key, count in (now or {}).items():
        probe, pid, comm = key[0], key[1], key[2]
        row = totals.setdefault((str(probe), pid), [comm, 0, 0])
        row[1] += count
        row[2] += count - (before.get(key, 0) if before is not None else 0)
    out = []
    for (probe, pid), (comm, total, delta) in totals.items():
        hist = (latencies or {}).get((probe, pid))
        p50, p99 = ((hist.percentile(50), hist.percentile(99)) if hist is not None and hist.total
                    else (None, None))
        # A traced process names itself: its comm must not drive the terminal.
        out.append(TopRow(printable(probe), pid, "?" if comm is None else printable(str(comm)),
                          delta / seconds if seconds > 0 else 0.0, total, p50, p99))
    out.sort(key=lambda r: (-r.rate, -r.total, r.probe, str(r.pid)))
    return out


def _rate(value: float) -> str:
    if value >= 10_000_000:
        return f"{value / 1e6:.0f}M"
    if value >= 100_000:
        return f"{value / 1e3:.0f}k"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "~"


def render(table: Sequence[TopRow], width: int, height: Optional[int] = None, timed: bool = False,
           title: str = "") -> List[str]:
    """The lines of the table fitted to ``width`` columns (the probe and command names give way first)
    and, given ``height``, to that many lines (a last line says how many rows did not fit)."""
    numbers = [("PID", 7), ("HITS/S", 8), ("TOTAL", 10)] + ([("P50", 9), ("P99", 9)] if timed else [])
    fixed = sum(w + 1 for _, w in numbers)
    left = max(width - fixed, 12)
    probe_width = max(min(max([len(r.probe) for r in table] + [5]), left - 9), 5)
    comm_width = max(min(16, left - probe_width - 1), 4)
    head = f"{'PROBE':<{probe_width}} {'COMM':<{comm_width}} " + " ".join(f"{n:>{w}}" for n, w in numbers)
    lines = ([title[:width]] if title else []) + [head[:width]]
    room = None if height is None else max(height - len(lines), 0)
    shown = table if room is None or len(table) <= room else table[:max(room - 1, 0)]
    for r in shown:
        cells = [str(r.pid), _rate(r.rate), str(r.total)]
        if timed:
            cells += ["-" if r.p50 is None else format_value(r.p50, "ns"),
                      "-" if r.p99 is None else format_value(r.p99, "ns")]
        text = (f"{_cut(r.probe, probe_width):<{probe_width}} {_cut(r.comm, comm_width):<{comm_width}} "
                + " ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, numbers)))
        lines.append(text[:width])
    if len(shown) < len(table):
        lines.append(f"... {len(table) - len(shown)} more rows (a taller terminal shows them)"[:width])
    if not table:
        lines.append("(no hits yet)")
    return lines


def totals_line(table: Iterable[TopRow]) -> str:
    rows_ = list(table)
    return f"{len(rows_)} rows, {_rate(sum(r.rate for r in rows_))} hits/s, {sum(r.total for r in rows_)} in all"
