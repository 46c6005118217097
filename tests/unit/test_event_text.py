"""Clocks and CSV without a kernel."""
from __future__ import annotations

import csv
import io

from usdtkit.collect.results import Counts, Event
from usdtkit.views.event_text import Clock, EventCsv, counts_csv, event_line


def event(ts: int, *args: object, retval=None) -> Event:
    return Event("p:a", 7, 8, ts, 1, "x\x1bq", tuple(args), retval)


def test_relative_counts_from_the_first_event_and_boot_is_the_kernel_clock():
    relative, boot = Clock("relative"), Clock("boot")
    assert [relative.text(t) for t in (5_000_000_000, 5_250_000_000)] == ["0.000000", "0.250000"]
    assert boot.text(5_250_000_000) == "5.250000"
    wall = Clock("wall")
    assert len(wall.text(1)) == len("00:00:00.000000") and "T" in wall.iso(1)


def test_text_escapes_and_csv_quotes():
    line = event_line(event(1_000_000_000, 3, 'a"b', None, retval=-1), Clock("boot"))
    assert line.startswith("1.000000       7       8 x\\x1bq") and line.endswith('p:a 3 "a\\"b" ? ret=-1')
    out = io.StringIO()
    table = EventCsv(out, Clock("boot"), 3)
    table.write(event(2_000_000_000, 1, "x,\ny"))
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[1] == ["2.000000", "p:a", "7", "8", "1", "x\x1bq", "1", "x,\ny", "", "", ""]
    assert counts_csv(Counts(("comm",), {("p", None): 2, ("p", "a,b"): 5})) == 'probe,comm,count\np,"a,b",5\np,,2\n'


def test_the_time_of_day_is_the_wall_clock_to_the_microsecond():
    import datetime
    import time

    clock = Clock("wall")
    now = time.monotonic_ns()
    for ns in (now, now + 999_999, now + 1_000_001, now + 3_600_123_456_789):
        expected = datetime.datetime.fromtimestamp((ns + clock._wall_minus_mono) / 1e9).strftime("%H:%M:%S.%f")
        got = clock.text(ns)
        assert abs(_seconds(got) - _seconds(expected)) < 2e-6, (got, expected)


def _seconds(text: str) -> float:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)
