"""Prometheus metric families read from the kernel maps at scrape time.

A ``prometheus_client`` custom collector: each scrape reads every live session's counts, histograms
and per-probe statistics and turns them into metric families; nothing is cached between scrapes but
which label sets were exposed, so the series a limit keeps stay the same from one scrape to the next.

Histogram buckets are cumulative with exact ``le`` bounds (see :mod:`.metrics`); the kernel also keeps
the sum of the values, so each histogram carries ``_bucket``, ``_count`` and ``_sum`` (in base units).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample

from ..collect.results import Histogram, ProbeStats
from ..errors import UsdtkitError
from ..plan import buckets as bucketing
from .config import SELF_PREFIX
from .metrics import MetricSpec, exposed_bounds

LOSS_KINDS = ("lost_events", "lost_keys", "read_errors", "unmatched", "unfinished")
_log = logging.getLogger("usdtkit.exporter")


@dataclass
class MetricState:
    """What the collector needs of one configured metric: its spec, its session when attached
    (anything with ``counts()``, ``histograms()``, ``stats()`` and ``attachments``), and whether it is up."""

    spec: MetricSpec
    session: Optional[object] = None
    up: bool = False


def _text(value: object) -> str:
    return "?" if value is None else str(value)  # a failed read is shown, never turned into a value


def _le(raw: int, scale: Fraction) -> str:
    return repr(float(raw * scale))


def _namer(spec: MetricSpec) -> Callable[[Tuple[str, ...]], Tuple[str, ...]]:
    """Label values as shown: through the metric's ``label_values`` tables, where it has them."""
    if not spec.label_values:
        return lambda labels: labels
    tables = dict(spec.label_values)
    per_label = [dict(tables.get(label, ())) for label, _ in spec.labels]
    return lambda labels: tuple(table.get(value, value) for table, value in zip(per_label, labels))


def limit_series(rows: Dict[Tuple[str, ...], int], limit: int, kept: Set[Tuple[str, ...]]) -> Tuple[Set, int]:
    """Which label sets to expose: those exposed before first (a series never vanishes while its metric
    lives), then the largest; returns them and how many were left out."""
    if len(rows) <= limit:
        return set(rows), 0
    chosen = [k for k in rows if k in kept][:limit]
    rest = sorted((k for k in rows if k not in kept), key=lambda k: (-rows[k], k))
    chosen += rest[:limit - len(chosen)]
    return set(chosen), len(rows) - len(chosen)


def kernel_les(hists: Iterable[Histogram]) -> List[int]:
    """Every kernel boundary (``le`` in kernel units) up to the highest bucket with data in any of
    ``hists``: one set for all label sets of a metric, so they can be summed by ``le``."""
    hists = list(hists)
    if not hists:
        return []
    first = hists[0]
    if first.kind != "log2":
        return [first.bounds(i)[1] - 1 for i in range(bucketing.linear_count(first.low, first.high, first.step) + 1)]
    used = {i for h in hists for i, n in h.buckets.items() if n}
    top = max((i for i in used if i != Histogram.NEGATIVE), default=0)
    return ([-1] if Histogram.NEGATIVE in used else []) + [(1 << i) - 1 for i in range(top + 1)]


def cumulative(hist: Histogram, les: Sequence[int]) -> List[Tuple[object, float]]:
    """``(le, count)`` pairs in kernel units for exact boundaries ``les``, ending with ``+Inf``."""
    edges = sorted((hist.bounds(i)[1] - 1, n) for i, n in hist.buckets.items() if n)
    out: List[Tuple[object, float]] = []
    for le in les:
        out.append((le, float(sum(n for edge, n in edges if edge <= le))))
    out.append(("+Inf", float(hist.total)))
    return out


class ExporterCollector:
    """Yields every configured metric and the exporter's own metrics, under ``lock``."""

    def __init__(self, states: Callable[[], Iterable[MetricState]], lock: threading.Lock,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._states = states
        self._lock = lock
        self._clock = clock
        self._kept: Dict[str, Set[Tuple[str, ...]]] = {}
        # per metric: a count row -> (its value, when it last changed), to forget rows that stopped changing
        self._changed: Dict[str, Dict[Tuple, Tuple[int, float]]] = {}
        self.forgotten: Dict[str, int] = {}

    def describe(self) -> List[Metric]:
        return []  # families depend on the configuration of the moment: never checked at register time

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        up = GaugeMetricFamily(f"{SELF_PREFIX}metric_up", "1 when the metric's probes are attached, else 0 "
                               "(the reason is logged)", labels=["metric"])
        sites = GaugeMetricFamily(f"{SELF_PREFIX}probes_attached", "Probe sites (uprobes) attached per metric",
                                  labels=["metric"])
        hits = CounterMetricFamily(f"{SELF_PREFIX}probe_hits", "Probe hits counted in the kernel, after filters",
                                   labels=["metric"])
        losses = CounterMetricFamily(f"{SELF_PREFIX}losses", "What the kernel could not keep, by kind: "
                                     + ", ".join(LOSS_KINDS), labels=["metric", "kind"])
        dropped = GaugeMetricFamily(f"{SELF_PREFIX}series_dropped", "Label sets over the metric's series "
                                    "limit, left out of this scrape (never merged)", labels=["metric"])
        forgotten = CounterMetricFamily(f"{SELF_PREFIX}series_forgotten", "Counter series forgotten after "
                                        "series_ttl seconds without a change", labels=["metric"])
        run_time = CounterMetricFamily(f"{SELF_PREFIX}bpf_program_run_time_seconds", "Time the kernel spent in "
                                       "the metric's BPF programs (the kernel's run-time statistics)",
                                       labels=["metric"])
        runs = CounterMetricFamily(f"{SELF_PREFIX}bpf_program_runs", "Runs of the metric's BPF programs",
                                   labels=["metric"])
        with self._lock:
            states = list(self._states())
            live = {s.spec.name for s in states}
            for name in list(self._kept):
                if name not in live:
                    del self._kept[name]
            for name in list(self._changed):
                if name not in live:
                    del self._changed[name]
                    self.forgotten.pop(name, None)
            for state in states:
                name = state.spec.name
                up.add_metric([name], 1.0 if state.up else 0.0)
                if state.session is None:
                    self._kept.pop(name, None)
                    continue
                try:
                    family, over = self._family(state)
                    stats: Dict[str, ProbeStats] = state.session.stats()  # type: ignore[attr-defined]
                except UsdtkitError as exc:
                    _log.warning("metric %s: cannot read its maps: %s", name, exc)
                    continue
                yield family
                sites.add_metric([name], float(len(state.session.attachments)))  # type: ignore[attr-defined]
                hits.add_metric([name], float(sum(s.hits for s in stats.values())))
                for kind in LOSS_KINDS:
                    losses.add_metric([name, kind], float(sum(getattr(s, kind) for s in stats.values())))
                dropped.add_metric([name], float(over))
                forgotten.add_metric([name], float(self.forgotten.get(name, 0)))
                run_ns, run_count = state.session.run_stats()  # type: ignore[attr-defined]
                run_time.add_metric([name], run_ns / 1e9)
                runs.add_metric([name], float(run_count))
        yield from (up, sites, hits, losses, dropped, forgotten, run_time, runs)
        yield GaugeMetricFamily(f"{SELF_PREFIX}scrape_duration_seconds",
                                "Time this scrape spent reading the kernel maps", value=time.monotonic() - started)

    def _stale(self, spec: MetricSpec, session: object, counts: Dict[Tuple, int]) -> List[Tuple]:
        """Rows unchanged for ``series_ttl`` seconds, forgotten in the kernel map as well: with label
        values that keep changing (ids, pids), the map and the exposition stay bounded.  A forgotten row
        that counts again starts from zero, which Prometheus reads as a counter reset."""
        if not spec.series_ttl or not spec.labels:
            return []
        now = self._clock()
        changed = self._changed.setdefault(spec.name, {})
        stale = []
        for key, count in counts.items():
            before = changed.get(key)
            if before is None or before[0] != count:
                changed[key] = (count, now)
            elif now - before[1] >= spec.series_ttl:
                stale.append(key)
        for key in [k for k in changed if k not in counts]:
            del changed[key]
        if stale:
            session.forget_counts(stale)  # type: ignore[attr-defined]
            for key in stale:
                changed.pop(key, None)
            self.forgotten[spec.name] = self.forgotten.get(spec.name, 0) + len(stale)
        return stale

    def _family(self, state: MetricState) -> Tuple[Metric, int]:
        spec, session = state.spec, state.session
        names = [label for label, _ in spec.labels]
        help_text = spec.help or f"{spec.type} from usdtkit probes"
        kept = self._kept.setdefault(spec.name, set())
        if spec.type == "counter":
            family = CounterMetricFamily(spec.name, help_text, labels=names)
            counts = dict(session.counts() or {})  # type: ignore[attr-defined]
            for key in self._stale(spec, session, counts):
                del counts[key]
            rows: Dict[Tuple[str, ...], int] = {}
            shown = _namer(spec)
            for key, count in counts.items():
                labels = shown(tuple(_text(v) for v in key[1:]))  # the probe label is first: summed over probes
                rows[labels] = rows.get(labels, 0) + count
            if not names:
                rows.setdefault((), 0)  # one series that exists from the start, so rate() sees the first hits
            chosen, over = limit_series(rows, spec.series_limit, kept)
            for labels in sorted(chosen):
                family.add_metric(list(labels), float(rows[labels]))
            self._kept[spec.name] = chosen
            return family, over
        family = HistogramMetricFamily(spec.name, help_text, labels=names)
        merged: Dict[Tuple[str, ...], Histogram] = {}
        for key, hist in session.histograms().items():  # type: ignore[attr-defined]
            labels = _namer(spec)(tuple(_text(v) for v in key[1:])) if names and isinstance(key, tuple) else ()
            into = merged.setdefault(labels, Histogram(hist.kind, {}, hist.low, hist.high, hist.step, hist.unit,
                                                       hist.upper_bounds, 0))
            for index, count in hist.buckets.items():
                into.buckets[index] = into.buckets.get(index, 0) + count
            into.sum = (into.sum or 0) + (hist.sum or 0)
        totals = {labels: h.total for labels, h in merged.items()}
        chosen, over = limit_series(totals, spec.series_limit, kept)
        les = exposed_bounds(spec) or kernel_les(merged[labels] for labels in chosen)
        for labels in sorted(chosen):
            pairs = cumulative(merged[labels], les)
            buckets = [(le if le == "+Inf" else _le(le, spec.scale), n) for le, n in pairs]  # type: ignore[arg-type]
            total_sum = float((merged[labels].sum or 0) * spec.scale)
            before = len(family.samples)
            family.add_metric(list(labels), buckets, total_sum)
            if not any(s.name == f"{spec.name}_count" for s in family.samples[before:]):
                # prometheus_client leaves out _count and _sum when a bucket bound is negative (as for
                # values below a linear histogram's low end); they are exact here, so they are given
                label_map = dict(zip(names, labels))
                family.samples.append(Sample(f"{spec.name}_count", label_map, float(totals[labels]), None, None))
                family.samples.append(Sample(f"{spec.name}_sum", label_map, total_sum, None, None))
        self._kept[spec.name] = chosen
        return family, over
