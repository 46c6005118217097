"""Histograms with fixed upper bounds (Prometheus' ``le``), filled in the kernel from a real probe."""
from __future__ import annotations

import os

import pytest

from usdtkit.expr.fields import Field
from usdtkit.plan.request import HistSpec
from usdtkit.tracing.api import trace

HELLO = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "demo_apps", "build", "hello_usdt")


@pytest.mark.bpf
@pytest.mark.parametrize("bounds", [(1, 4, 10, 50), (-3, 0, 9, 16, 1000)])
def test_fixed_buckets_count_each_value_under_its_bound(bounds):
    # hello:tick carries (i, i*i) for i = 1..8: 1 4 9 16 25 36 49 64
    with trace("usdt::hello:tick", command=[HELLO, "8"], events=False,
               hist=HistSpec(Field("arg", 1), "fixed", bounds=bounds)) as session:
        session.run(duration=30)
    hist = session.histograms()["hello:tick"]
    expected = {}
    for i in range(1, 9):
        slot = hist.bucket_of(i * i)
        expected[slot] = expected.get(slot, 0) + 1
    assert dict(hist.buckets) == expected and hist.total == 8


@pytest.mark.bpf
def test_a_histogram_can_keep_the_sum_of_its_values():
    with trace("usdt::hello:tick", command=[HELLO, "8"], events=False,
               hist=HistSpec(Field("arg", 1), sum=True)) as session:
        session.run(duration=30)
    hist = session.histograms()["hello:tick"]
    assert hist.total == 8 and hist.sum == sum(i * i for i in range(1, 9))
    assert hist.to_json()["sum"] == 204


@pytest.mark.bpf
def test_a_histogram_split_by_two_fields():
    # hello:greet carries (i, name): one histogram of i per (name, comm), in the order asked
    with trace("usdt::hello:greet", command=[HELLO, "3", "ann"], events=False,
               hist=HistSpec(Field("arg", 0), by=(Field("str", 1), Field("comm")))) as session:
        session.run(duration=30)
    hists = session.histograms()
    assert set(hists) == {("hello:greet", "ann", "hello_usdt")}
    assert hists[("hello:greet", "ann", "hello_usdt")].total == 3


@pytest.mark.bpf
def test_a_histogram_adds_up_other_fields_of_each_key():
    # hello:tick carries (i, i*i): a histogram of i that also adds up i*i
    with trace("usdt::hello:tick", command=[HELLO, "8"], events=False,
               hist=HistSpec(Field("arg", 0), sum=True, sums=(Field("arg", 1),))) as session:
        session.run(duration=30)
    hist = session.histograms()["hello:tick"]
    assert (hist.total, hist.sum, hist.sums) == (8, 36, {"arg1": 204})
