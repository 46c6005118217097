"""Results of several programs of one trace summed into one reading (usdtkit.collect.merge)."""
from __future__ import annotations

from usdtkit.collect.merge import merge_counts, merge_histograms, merge_stats
from usdtkit.collect.results import Counts, Histogram, ProbeStats


def test_stats_of_one_label_add_up_and_others_are_kept():
    merged = merge_stats([{"svc:order": ProbeStats(hits=3, lost_events=1), "py:gc": ProbeStats(hits=2)},
                          {"svc:order": ProbeStats(hits=4, read_errors=2, unfinished=1)}, {}])
    assert merged == {"svc:order": ProbeStats(hits=7, lost_events=1, read_errors=2, unfinished=1),
                      "py:gc": ProbeStats(hits=2)}


def test_counts_add_up_by_key():
    merged = merge_counts([None, Counts(("arg0",), {("svc:order", 1): 2, ("svc:order", 2): 1}),
                           Counts(("arg0",), {("svc:order", 1): 5, ("svc:tick", 1): 1})])
    assert merged.fields == ("probe", "arg0")
    assert dict(merged) == {("svc:order", 1): 7, ("svc:order", 2): 1, ("svc:tick", 1): 1}
    assert merge_counts([None, None]) is None


def test_histograms_add_up_by_bucket_with_their_sums():
    merged = merge_histograms([{"svc:order": Histogram("log2", {1: 2, 3: 1}, sum=9), "other": Histogram("log2")},
                               {"svc:order": Histogram("log2", {3: 4, 5: 1}, sum=40)}])
    assert merged["svc:order"] == Histogram("log2", {1: 2, 3: 5, 5: 1})
    assert merged["svc:order"].sum == 49 and merged["svc:order"].total == 8
    assert merged["other"] == Histogram("log2")
    unsummed = merge_histograms([{"a": Histogram("log2", {1: 1}, sum=1)}, {"a": Histogram("log2", {1: 1})}])
    assert unsummed["a"].sum is None  # a sum is only kept where every program kept it
