"""Results as text: values with units, escaped keys, and tables fitted to a terminal's width."""
from __future__ import annotations

import io

from usdtkit.collect.results import Counts, Histogram
from usdtkit.views.text import MIN_CUT, format_value, key_text, render_counts, render_table, terminal_width


def test_values_keys_and_histograms_read_as_text():
    assert [format_value(v, "ns") for v in (999, 1500, 2_500_000, 3 * 10**9)] == ["999 ns", "1.5 us", "2.5 ms", "3 s"]
    assert key_text(None) == "?" and key_text("a\x1b[2Jb") == "a\\x1b[2Jb"
    text = Histogram("log2", {3: 2, 5: 4}).render(width=8)
    assert text.splitlines() == ["[4, 8)   2 |@@@@    |", "[8, 16)  0 |        |", "[16, 32) 4 |@@@@@@@@|"]


def test_a_table_too_wide_for_the_terminal_cuts_its_widest_columns():
    stack = ";".join(f"frame_number_{i}" for i in range(40))
    rows = [["p:a", "web", stack, "12"], ["p:b", "db", "main;f", "3"]]
    whole = render_table(["probe", "comm", "ustack", "count"], rows)
    assert stack in whole  # no width: whole lines, for pipes
    fitted = render_table(["probe", "comm", "ustack", "count"], rows, width=60).splitlines()
    assert all(len(line) <= 60 for line in fitted), fitted
    assert fitted[1].split()[:2] == ["p:a", "web"] and fitted[1].split()[-1] == "12"
    assert "~" in fitted[1] and fitted[2].split() == ["p:b", "db", "main;f", "3"]
    # never below MIN_CUT a column: a narrow terminal wraps rather than losing every column
    tiny = render_table(["a" * 30, "b" * 30], [["x" * 30, "y" * 30]], width=10).splitlines()
    assert all(len(line) == 2 * MIN_CUT + 2 for line in tiny)


def test_counts_are_fitted_only_on_a_terminal():
    counts = Counts(("ustack",), {("p", "x" * 200): 5})
    assert len(render_counts(counts, width=50).splitlines()[1]) <= 50
    assert "x" * 200 in render_counts(counts)
    assert terminal_width(io.StringIO()) is None
