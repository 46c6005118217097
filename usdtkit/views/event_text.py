"""Events and counts as lines for people (text) and for spreadsheets (CSV), with the time told three ways.

An event's ``timestamp_ns`` is the kernel's monotonic clock (``bpf_ktime_get_ns``: time since boot,
not counting suspend).  ``wall`` turns it into the local time of day (the offset between the two
clocks is taken once, when the clock is made), ``boot`` keeps it as seconds, ``relative`` counts
seconds from the first event.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import time
from typing import TYPE_CHECKING, List, Optional, TextIO

from .text import printable

if TYPE_CHECKING:  # pragma: no cover
    from ..collect.results import Counts, Event

CLOCKS = ("wall", "boot", "relative")


class Clock:
    """Formats monotonic nanoseconds as ``wall`` (text: ``HH:MM:SS.ffffff``; CSV: ISO 8601 with the
    offset from UTC), ``boot`` or ``relative`` seconds (six decimals)."""

    def __init__(self, kind: str, start_ns: Optional[int] = None) -> None:
        if kind not in CLOCKS:
            raise ValueError(kind)
        self.kind = kind
        self.start_ns = start_ns  # relative: the first event's time unless given
        self._wall_minus_mono = time.time_ns() - time.monotonic_ns()
        self._zone = datetime.datetime.now().astimezone().tzinfo
        self._second = -1
        self._prefix = ""

    def _wall(self, ns: int) -> datetime.datetime:
        return datetime.datetime.fromtimestamp((ns + self._wall_minus_mono) / 1e9, self._zone)

    def text(self, ns: int) -> str:
        if self.kind == "wall":
            # Events come by the hundred thousand per second: the time of day is formatted once per
            # second, the microseconds every time.
            wall = ns + self._wall_minus_mono
            second, rest = divmod(wall, 1_000_000_000)
            if second != self._second:
                self._second = second
                self._prefix = datetime.datetime.fromtimestamp(second, self._zone).strftime("%H:%M:%S.")
            return f"{self._prefix}{rest // 1000:06d}"
        return self.seconds(ns)

    def iso(self, ns: int) -> str:
        if self.kind == "wall":
            return self._wall(ns).isoformat(timespec="microseconds")
        return self.seconds(ns)

    def seconds(self, ns: int) -> str:
        if self.kind == "relative" and self.start_ns is None:
            self.start_ns = ns
        base = self.start_ns if self.kind == "relative" else 0
        return f"{(ns - base) / 1e9:.6f}"


def _value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # quoted, control characters escaped
    return "?" if value is None else str(value)


def event_line(event: "Event", clock: Clock) -> str:
    """``TIME PID TID COMM PROBE ARGS... [ret=R]`` for a terminal."""
    values = " ".join(_value(v) for v in event.args)
    extra = f" ret={event.retval}" if event.retval is not None else ""
    return (f"{clock.text(event.timestamp_ns)} {event.pid:>7} {event.tid:>7} {printable(event.comm):<15} "
            f"{event.probe} {values}{extra}")


class EventCsv:
    """Events as CSV rows under one header: time, probe, pid, tid, cpu, comm, arg0..argN (as many as
    the probes with the most arguments have; empty where a probe has fewer), retval, latency_ns."""

    def __init__(self, stream: TextIO, clock: Clock, arg_count: int) -> None:
        self._stream = stream
        self._clock = clock
        self._args = arg_count
        self._writer = csv.writer(stream, lineterminator="\n")
        self._writer.writerow(["time", "probe", "pid", "tid", "cpu", "comm",
                               *(f"arg{i}" for i in range(arg_count)), "retval", "latency_ns"])

    def write(self, event: "Event") -> None:
        args: List[object] = ["" if v is None else v for v in event.args[:self._args]]
        args += [""] * (self._args - len(args))
        self._writer.writerow([self._clock.iso(event.timestamp_ns), event.probe, event.pid, event.tid, event.cpu,
                               event.comm, *args, "" if event.retval is None else event.retval,
                               "" if event.latency_ns is None else event.latency_ns])


def counts_csv(counts: Optional["Counts"], limit: Optional[int] = None) -> str:
    """The counts as CSV: one column per key field, then ``count``; largest first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if counts is None:
        return ""
    writer.writerow([*counts.fields, "count"])
    for key, value in counts.most_common(limit):
        writer.writerow([*("" if k is None else k for k in key), value])
    return out.getvalue()

