"""Noticing a tracer: the probes' semaphores, read by a daemon thread a few times a second.

A tracer attaching a USDT probe makes the kernel increment the probe's semaphore in this process's
memory (:mod:`usdtkit.provider.semaphore`), and detaching decrements it; nothing else tells the
process: no file descriptor becomes readable, no signal arrives.  So a daemon thread waits
``interval`` seconds, reads the semaphores, and calls ``changed(True)`` when one became nonzero,
``changed(False)`` when all are zero again, and ``refresh()`` at every poll while traced.  Hooks are
thus on at most about ``interval`` after an attach (plus up to the interpreter's switch interval,
5 ms, to get the GIL from a busy thread), and off as soon after the last detach.  The program sees
one more thread, a daemon named ``usdtkit-instrument``.

While nobody traces, each poll is one wake-up from a timed lock acquire and two memory reads with
the GIL held, and nothing at all runs on the program's threads: bench/bench_instrument.py measures
an idle instrumented process at about 0.1% of a CPU (70 to 100 us per poll on a virtual machine,
most of it the kernel waking a thread).  A tracer cannot be noticed without some polling: the kernel's uprobe
reference counter has no notification.
"""
from __future__ import annotations

import sys
import threading
from typing import Callable, Optional

INTERVAL = 0.1


class Watcher:
    """The polling thread; :meth:`stop` ends it."""

    def __init__(self, traced: Callable[[], bool], changed: Callable[[bool], None],
                 refresh: Callable[[], None], interval: float = INTERVAL,
                 prepare: Optional[Callable[[], None]] = None, traced_now: bool = False) -> None:
        self._prepare = prepare  # run first on the thread, before any poll
        self._traced_now = traced_now  # the hooks were turned on before the thread started
        self._traced = traced
        self._changed = changed
        self._refresh = refresh
        self._interval = interval
        # Held until stop(): each poll is a timed acquire of it, which is cheaper than Event.wait()
        # (that one builds a Condition waiter in Python at every call).
        self._running = threading.Lock()
        self._running.acquire()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="usdtkit-instrument", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._running.locked():
            self._running.release()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        traced = self._traced_now
        try:
            if self._prepare is not None:
                self._prepare()
        except Exception as exc:
            print(f"usdtkit.instrument: {exc}; functions are not traced in this process", file=sys.stderr)
            return
        while not self._running.acquire(timeout=self._interval):
            try:
                now = self._traced()
                if now != traced:
                    self._changed(now)
                    traced = now
                elif now:
                    self._refresh()
            except Exception as exc:  # the program goes on untraced rather than stopping
                print(f"usdtkit.instrument: {exc}; functions are not traced in this process",
                      file=sys.stderr)
                return
