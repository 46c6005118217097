"""One exported metric: what the config says (:class:`MetricSpec`) and the trace that measures it.

A metric is one :class:`~usdtkit.plan.request.TraceRequest` that collects in the kernel only (no
events): a counter counts hits by its label fields, a histogram fills buckets of a value field or of
the latency between two probes (``start``/``done``) or of one function's calls (``latency:``).
Prometheus wants base units, so latencies, measured in nanoseconds, are exposed in seconds.

Bucket boundaries are exact.  The kernel counts integers, so a kernel bucket ``[lo, hi)`` is exactly
the Prometheus bucket ``le = hi - 1``; any subset of those boundaries is still exact because
Prometheus buckets are cumulative.  A list of bounds is therefore turned into linear kernel buckets
whose boundaries include every listed bound, and refused when that would take too many buckets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Tuple

from ..errors import UsageError
from ..expr.fields import Field
from ..plan import buckets as bucketing
from ..plan.request import HistSpec, Target, TraceRequest, make_request

NS_PER_SECOND = 1_000_000_000
DEFAULT_SERIES_LIMIT = 1000
DEFAULT_SERIES_TTL = 3600  # seconds a counter series may stay unchanged before it is forgotten


@dataclass(frozen=True)
class BucketSpec:
    """``exp2`` (powers of two), ``linear`` (low, high, step) or ``bounds`` (a list of ``le`` values),
    all in the metric's base unit."""

    kind: str = "exp2"
    low: Fraction = Fraction(0)
    high: Fraction = Fraction(0)
    step: Fraction = Fraction(1)
    bounds: Tuple[Fraction, ...] = ()


@dataclass(frozen=True)
class MetricSpec:
    """One metric as configured.  Exactly one source: ``probes`` (with ``value`` for a histogram),
    ``start``+``done`` (latency between them, matched by ``key`` or by thread) or ``latency`` (a
    function's time per call)."""

    name: str
    type: str
    help: str = ""
    probes: Tuple[str, ...] = ()
    start: Optional[str] = None
    done: Optional[str] = None
    key: Optional[str] = None
    latency: Optional[str] = None
    value: Optional[str] = None
    labels: Tuple[Tuple[str, str], ...] = ()
    filters: Tuple[str, ...] = ()
    buckets: BucketSpec = BucketSpec()
    pid: Optional[int] = None
    cgroup: Optional[str] = None  # a cgroup v2 directory: only its tasks' hits
    series_limit: int = DEFAULT_SERIES_LIMIT
    series_ttl: int = DEFAULT_SERIES_TTL  # counters: 0 keeps every series for the metric's life
    # per label, names shown for raw values (status 200 -> ok); values without a name are shown as they are
    label_values: Tuple[Tuple[str, Tuple[Tuple[str, str], ...]], ...] = ()
    line: int = field(default=0, compare=False)  # where the metric starts in its file
    probe_line: int = field(default=0, compare=False)  # where its probes are named

    @property
    def measures_latency(self) -> bool:
        return self.start is not None or self.latency is not None

    @property
    def scale(self) -> Fraction:
        """Base units per kernel unit: nanoseconds to seconds for latency, 1 otherwise."""
        return Fraction(1, NS_PER_SECOND) if self.measures_latency else Fraction(1)

    def tracing_key(self) -> tuple:
        """What decides the trace: two specs with the same key can share one session (a changed help
        text or series limit needs no new attach)."""
        return (self.type, self.probes, self.start, self.done, self.key, self.latency, self.value,
                self.labels, self.filters, self.buckets, self.pid, self.cgroup)


def _kernel_int(value: Fraction, scale: Fraction, what: str) -> int:
    raw = value / scale
    if raw.denominator != 1:
        unit = "nanosecond" if scale != 1 else "integer"
        raise UsageError(f"{what} {float(value):g} is not a whole {unit}")
    return int(raw)


def kernel_buckets(spec: MetricSpec) -> Tuple[str, int, int, int, Tuple[int, ...]]:
    """The kernel histogram (kind, low, high, step, bounds) for the metric's buckets, in kernel units:
    exp2 is log2, linear is linear, and a list of bounds is the kernel's fixed kind, whose buckets end
    exactly at each bound (``le``)."""
    b, scale = spec.buckets, spec.scale
    if b.kind == "exp2":
        return "log2", 0, 0, 1, ()
    if b.kind == "linear":
        low, high, step = (_kernel_int(v, scale, f"buckets {name}")
                           for v, name in ((b.low, "low"), (b.high, "high"), (b.step, "step")))
        return "linear", low, high, step, ()
    raws = tuple(_kernel_int(v, scale, "bucket bound") for v in b.bounds)
    if len(raws) > bucketing.MAX_FIXED_BOUNDS:
        raise UsageError(f"buckets: {len(raws)} bounds (at most {bucketing.MAX_FIXED_BOUNDS})")
    if any(x >= y for x, y in zip(raws, raws[1:])):
        raise UsageError("buckets: bounds must increase")
    return "fixed", 0, 0, 1, raws


def to_request(spec: MetricSpec) -> TraceRequest:
    """The trace that measures ``spec`` (validated: probe specs, fields, filters, buckets)."""
    target = Target(pid=spec.pid, cgroup=spec.cgroup)
    labels = [f for _, f in spec.labels]
    if spec.type == "counter":
        return make_request(list(spec.probes), target=target, filters=spec.filters, events=False,
                            count_by=labels)
    kind, low, high, step, bounds = kernel_buckets(spec)
    by = tuple(Field.parse(label) for label in labels) or None
    measured = Field("latency") if spec.measures_latency else Field.parse(spec.value or "")
    hist = HistSpec(measured, kind, low, high, step, by=by, bounds=bounds, sum=True)
    if spec.latency is not None:
        return make_request([spec.latency], target=target, filters=spec.filters, events=False,
                            hist=hist, latency=True)
    if spec.start is not None:
        keys = None if spec.key is None else (spec.key, spec.key)
        return make_request([spec.start, spec.done or ""], target=target, filters=spec.filters,
                            events=False, hist=hist, latency=True, pair_keys=keys)
    return make_request(list(spec.probes), target=target, filters=spec.filters, events=False, hist=hist)


def exposed_bounds(spec: MetricSpec) -> Optional[Tuple[int, ...]]:
    """The ``le`` values (in kernel units) a ``bounds`` metric exposes; None: every kernel boundary."""
    if spec.buckets.kind != "bounds":
        return None
    return tuple(_kernel_int(v, spec.scale, "bucket bound") for v in spec.buckets.bounds)
