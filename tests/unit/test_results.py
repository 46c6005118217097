"""Histograms and counts as plain values: indexing, percentiles, equality, rendering, JSON."""
from __future__ import annotations

import pytest

from usdtkit.collect.results import Counts, Histogram


def test_log2_buckets_match_the_kernel_convention():
    hist = Histogram("log2")
    for value, bucket in [(0, 0), (1, 1), (2, 2), (3, 2), (4, 3), (1023, 10), (1024, 11)]:
        assert hist.bucket_of(value) == bucket
        lo, hi = hist.bounds(bucket)
        assert lo <= value < hi


def test_linear_buckets():
    hist = Histogram("linear", low=0, high=100, step=10)
    assert hist.bucket_of(-1) == 0
    assert hist.bucket_of(0) == 1
    assert hist.bucket_of(99) == 10
    assert hist.bucket_of(100) == 11
    assert hist.bounds(3) == (20, 30)


def test_percentiles_and_equality():
    hist = Histogram("log2", {1: 50, 5: 49, 10: 1})
    assert hist.total == 100
    assert hist.percentile(50) == 2
    assert hist.percentile(99) == 32
    assert hist.percentile(100) == 1024
    assert hist[5] == 49 and hist[7] == 0
    assert hist == Histogram("log2", {1: 50, 5: 49, 10: 1, 3: 0})
    assert hist != Histogram("log2", {1: 50})
    with pytest.raises(ValueError):
        hist.percentile(101)


def test_render_and_json():
    hist = Histogram("log2", {3: 4, 5: 2})
    text = hist.render(width=8)
    assert text.splitlines()[0].startswith("[4, 8)")
    assert "|@@@@@@@@|" in text and "|@@@@    |" in text
    assert hist.to_json()["buckets"] == [{"low": 4, "high": 8, "count": 4}, {"low": 16, "high": 32, "count": 2}]


def test_counts_mapping():
    counts = Counts(("arg0",), {("p", 1): 3, ("p", 2): 5})
    assert counts[("p", 2)] == 5
    assert counts.total() == 8
    assert counts.most_common(1) == [(("p", 2), 5)]
    assert counts.fields == ("probe", "arg0")
    assert dict(counts) == {("p", 1): 3, ("p", 2): 5}


def test_fixed_buckets_hold_values_up_to_their_bound():
    hist = Histogram("fixed", upper_bounds=(0, 10, 100))
    for value, bucket in [(-5, 0), (0, 0), (1, 1), (10, 1), (11, 2), (100, 2), (101, 3)]:
        assert hist.bucket_of(value) == bucket
        lo, hi = hist.bounds(bucket)
        assert lo <= value < hi
    assert hist.bounds(1) == (1, 11) and hist.bounds(3)[0] == 101


def test_fixed_bounds_are_checked():
    from usdtkit.errors import UsageError
    from usdtkit.expr.fields import Field
    from usdtkit.plan.request import HistSpec

    for bounds in ((), (3, 2), (1, 1), tuple(range(65)), (True,)):
        with pytest.raises(UsageError):
            HistSpec(Field("arg", 0), "fixed", bounds=bounds)
    with pytest.raises(UsageError):
        HistSpec(Field("arg", 0), bounds=(1, 2))
