"""One run loop for every way of tracing: the CLI, :meth:`Session.run`, streams, and later services.

It owns time and interruptions so the session does not have to:

* a **deadline** (``duration``) and an ``until()`` condition, checked at least every
  :data:`MAX_STEP_S` seconds whatever the event rate: the session's consume budget makes every poll
  return even while a target fires without pause;
* **interval ticks** (``interval``): ``on_tick()`` is called once per interval, on time;
* **signals as flags**: SIGINT and SIGTERM (in the main thread) only set a flag and ask the session to
  stop consuming, because a handler that raises would land inside a backend callback;
* the **target's lifecycle**: when it exits, the loop ends (a long-running service that follows
  restarts makes a new plan and session, as :mod:`usdtkit.exporter.service` does).

:meth:`RunLoop.run` returns the reason it stopped: ``duration``, ``until``, ``stopped``,
``target exited``, ``interrupted`` or ``terminated``.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional

from ..errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

MAX_STEP_S = 0.2
MIN_INTERVAL_S = 0.01
MAX_SECONDS = 10 * 365 * 86400.0


def check_seconds(value: Optional[float], what: str, minimum: float = 0.0) -> Optional[float]:
    """``value`` as a finite number of seconds above ``minimum`` (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{what} must be a finite number of seconds, not {value!r}")
    if value <= 0 or value < minimum or value > MAX_SECONDS:
        low = f"at least {minimum:g}" if minimum else "more than 0"
        raise UsageError(f"{what} {value!r}: must be {low} and at most {MAX_SECONDS:g} seconds")
    return float(value)


class RunLoop:
    """Drive a session until a deadline, a condition, a signal or the target's exit."""

    def __init__(self, session: "Session", duration: Optional[float] = None, interval: Optional[float] = None,
                 until: Optional[Callable[[], bool]] = None, on_tick: Optional[Callable[[], None]] = None,
                 poll_interval: float = 0.1, raise_interrupt: bool = False) -> None:
        self.session = session
        self.duration = check_seconds(duration, "duration")
        self.interval = check_seconds(interval, "interval", MIN_INTERVAL_S)
        self.until = until
        self.on_tick = on_tick
        self.poll_interval = min(check_seconds(poll_interval, "poll interval") or MAX_STEP_S, MAX_STEP_S)
        self.raise_interrupt = raise_interrupt
        self.reason = ""
        self._signals: List[int] = []

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)
        self.session.stop()

    def run(self) -> str:
        for _ in self.steps():
            pass
        return self.reason

    @contextlib.contextmanager
    def _signals_as_flags(self) -> Iterator[None]:
        """While the session polls, SIGINT and SIGTERM only set a flag (where they are still at their
        defaults: an application's own handler stays in charge); outside, they act as usual."""
        installed = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):
                    installed[signum] = signal.signal(signum, self._on_signal)
        try:
            yield
        finally:
            for signum, previous in installed.items():
                signal.signal(signum, previous)

    def steps(self) -> Iterator[None]:
        """The loop, yielding after every poll (a stream hands out its events there)."""
        session = self.session
        if session.stopped:  # stopped before this loop began (a signal during attach, say): nothing to wait for
            self.reason = "stopped"
            return
        try:
            start = time.monotonic()
            deadline = None if self.duration is None else start + self.duration
            next_tick = None if self.interval is None else start + self.interval
            while session.attached:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self.reason = "duration"
                    break
                wait = self.poll_interval
                for mark in (deadline, next_tick):
                    if mark is not None:
                        wait = min(wait, max(mark - now, 0.0))
                with self._signals_as_flags():
                    session.poll(wait)
                yield
                if self._signals:
                    self.reason = "interrupted" if signal.SIGINT in self._signals else "terminated"
                    break
                if session.stopped:
                    self.reason = "stopped"
                    break
                if session.target_exited:
                    self.reason = "target exited"
                    break
                if self.until is not None and self.until():
                    self.reason = "until"
                    break
                if next_tick is not None and time.monotonic() >= next_tick:
                    if self.on_tick is not None:
                        self.on_tick()
                    next_tick += self.interval  # type: ignore[operator]
                    if next_tick < time.monotonic():  # a slow tick: skip, never burst
                        next_tick = time.monotonic() + self.interval  # type: ignore[operator]
            if not self.reason:
                self.reason = "detached"
            if not self._signals:
                with self._signals_as_flags():
                    session.drain()
                yield
        finally:
            if self._signals:
                session.resume()  # the stop served this loop; the session stays usable
        if self.raise_interrupt and signal.SIGINT in self._signals:
            raise KeyboardInterrupt
