"""Assertions on what probes said, for test suites (used through the pytest plugin, or directly).

    from usdtkit.testing import ANY, expect_probe

    expect_probe(session, "demo_httpd:request__done").fired(times=4) \\
        .with_args(ANY, 200, "/", ANY, ANY) \\
        .never_with(ANY, 500) \\
        .latency_below(99, 50_000_000)

Each method raises ``AssertionError`` with what was expected and what was seen (counts, the first
distinct argument tuples, the latency percentiles), so a failing test explains itself.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, List, Optional, Sequence

from .views.text import format_value
from .collect.results import Event

SHOW = 8  # distinct argument tuples shown in a failure message


class _Any:
    """Matches any value in an argument pattern."""

    def __eq__(self, other: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()


def _matches(args: Sequence[object], pattern: Sequence[object]) -> bool:
    return len(pattern) <= len(args) and all(p == a for p, a in zip(pattern, args))


def _percentile(values: List[int], p: float) -> int:
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * p / 100))
    return ordered[rank - 1]


class ProbeExpectation:
    """Chainable checks on the events one probe delivered."""

    def __init__(self, events: Iterable[Event], probe: str, lost: int = 0) -> None:
        self.probe = probe
        self.events = [e for e in events if e.probe == probe or e.probe.endswith(":" + probe)]
        self.lost = lost

    def _seen(self) -> str:
        if not self.events:
            return "it never fired"
        common = Counter(e.args for e in self.events).most_common(SHOW)
        shown = ", ".join(f"{args!r} x{n}" for args, n in common)
        more = len({e.args for e in self.events}) - len(common)
        tail = f" and {more} more" if more > 0 else ""
        lost = f" ({self.lost} events lost)" if self.lost else ""
        return f"it fired {len(self.events)} times{lost}: {shown}{tail}"

    def fired(self, times: Optional[int] = None, at_least: Optional[int] = None,
              at_most: Optional[int] = None) -> "ProbeExpectation":
        """The probe fired exactly ``times`` times (or within ``at_least``/``at_most``; at least once
        when nothing is given)."""
        n = len(self.events)
        if times is not None and n != times:
            raise AssertionError(f"expected {self.probe} to fire {times} times; {self._seen()}")
        if at_least is not None and n < at_least:
            raise AssertionError(f"expected {self.probe} to fire at least {at_least} times; {self._seen()}")
        if at_most is not None and n > at_most:
            raise AssertionError(f"expected {self.probe} to fire at most {at_most} times; {self._seen()}")
        if times is None and at_least is None and at_most is None and n == 0:
            raise AssertionError(f"expected {self.probe} to fire; {self._seen()}")
        return self

    def with_args(self, *pattern: object, times: Optional[int] = None) -> "ProbeExpectation":
        """Some hit (``times`` hits, if given) had these leading arguments (``ANY`` matches anything)."""
        hits = sum(1 for e in self.events if _matches(e.args, pattern))
        if (times is None and hits == 0) or (times is not None and hits != times):
            want = f"{times} times" if times is not None else "at least once"
            raise AssertionError(f"expected {self.probe} with arguments {pattern!r} {want}, got {hits}; "
                                 f"{self._seen()}")
        return self

    def never_with(self, *pattern: object) -> "ProbeExpectation":
        """No hit had these leading arguments."""
        bad = [e for e in self.events if _matches(e.args, pattern)]
        if bad:
            raise AssertionError(f"expected {self.probe} never with arguments {pattern!r}, but {len(bad)} of "
                                 f"{len(self.events)} hits had them (first: {bad[0].args!r}); {self._seen()}")
        return self

    def latency_below(self, percentile: float, bound_ns: int) -> "ProbeExpectation":
        """The ``percentile`` of the hits' latency (``latency_ns``) is below ``bound_ns``."""
        values = [e.latency_ns for e in self.events if e.latency_ns is not None]
        if not values:
            raise AssertionError(f"expected latencies for {self.probe}, but no hit carried one "
                                 "(trace with latency=True)")
        got = _percentile(values, percentile)
        if got >= bound_ns:
            summary = ", ".join(f"p{p} {format_value(_percentile(values, p), 'ns')}" for p in (50, 90, 99, 100))
            raise AssertionError(f"expected p{percentile:g} latency of {self.probe} below "
                                 f"{format_value(bound_ns, 'ns')}, got {format_value(got, 'ns')} "
                                 f"({len(values)} hits: {summary})")
        return self


def expect_probe(session: object, probe: str) -> ProbeExpectation:
    """Expectations on ``probe`` (``provider:name`` or a function) over a session's events so far."""
    drain = getattr(session, "drain", None)
    if drain is not None:
        drain()
    stats = getattr(session, "stats", lambda: {})()
    lost = sum(s.lost_events for label, s in stats.items() if label == probe or label.endswith(":" + probe))
    return ProbeExpectation(list(getattr(session, "events")), probe, lost)
