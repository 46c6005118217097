"""The table of usdtkit top from readings, without a terminal: rates, totals, percentiles, fitting."""
from __future__ import annotations

from usdtkit.collect.results import Counts, Histogram
from usdtkit.views.top_table import TopRow, render, rows


def counts(items):
    return Counts(("pid", "comm"), items)


def test_rates_come_from_the_interval_and_totals_from_the_start():
    before = counts({("p:a", 1, "web"): 10, ("p:b", 1, "web"): 5})
    now = counts({("p:a", 1, "web"): 30, ("p:b", 1, "web"): 5, ("p:b", 2, None): 4})
    table = rows(now, before, 2.0)
    assert [(r.probe, r.pid, r.comm, r.rate, r.total) for r in table] == [
        ("p:a", 1, "web", 10.0, 30), ("p:b", 2, "?", 2.0, 4), ("p:b", 1, "web", 0.0, 5)]
    assert rows(now, None, 1.0)[0].rate == 30.0  # the first reading: everything since attaching


def test_percentiles_go_on_the_rows_of_the_timed_probe_and_process():
    hist = Histogram("log2", {21: 3, 24: 1})  # 1-2 ms three times, 8-16 ms once
    table = rows(counts({("f", 7, "x"): 4, ("f", 8, "y"): 1}), None, 1.0, {("f", 7): hist})
    by_pid = {r.pid: r for r in table}
    assert (by_pid[7].p50, by_pid[7].p99) == (hist.percentile(50), hist.percentile(99))
    assert by_pid[8].p50 is None


def test_the_table_fits_the_width_and_height_it_is_given():
    table = [TopRow(f"provider:a_rather_long_probe_name_{i}", 1000 + i, "a-long-command-name", 12345.6 / (i + 1),
                    99999 * i, 1_500_000, 40_000_000) for i in range(30)]
    for width in (60, 80, 120, 200):
        lines = render(table, width, timed=True, title="t" * 300)
        assert all(len(line) <= width for line in lines), width
        assert lines[1].split() == ["PROBE", "COMM", "PID", "HITS/S", "TOTAL", "P50", "P99"]
        assert lines[2].split()[-4:] == ["1.5", "ms", "40", "ms"]
    short = render(table, 100, height=10)
    assert len(short) == 10 and short[-1].startswith("... 22 more rows")
    assert render([], 80)[-1] == "(no hits yet)"
