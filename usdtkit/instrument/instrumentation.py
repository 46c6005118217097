"""One process's instrumentation: the ``pycalls`` provider, the scope, the hooks and the watcher.

The provider is declared and loaded at once, so tracers find ``pycalls:function__entry`` and
``pycalls:function__return`` in the process from the start; the hooks stay off until the watcher
sees a tracer, so until then the program runs as fast as without usdtkit.  Each time the hooks turn
on they get fresh per-thread stacks and a fresh cache of scope decisions (so nothing a period saw
is kept after it: code objects of a program that compiles code at run time are not held forever).
"""
from __future__ import annotations

import threading
from typing import Callable, Optional, Tuple

from ..provider import Probe, Provider
from . import hooks
from .scope import Decider, Scope
from .watcher import INTERVAL, Watcher

PROVIDER = "pycalls"
ENTRY = "function__entry"
RETURN = "function__return"


def declare() -> Tuple[Provider, Probe, Probe]:
    """The loaded provider and its two probes (argument order is part of the contract with tracers)."""
    provider = Provider(PROVIDER)
    try:
        entry = provider.probe(ENTRY, str, str, int, int)  # function, file, line, depth
        ret = provider.probe(RETURN, str, str, int, int, int, int)  # ... depth, total_ns, self_ns
        provider.load()
    except BaseException:
        provider.close()
        raise
    return provider, entry, ret


class Instrumentation:
    """Created by :func:`usdtkit.instrument.enable`; one per process."""

    def __init__(self, scope: Scope, interval: float = INTERVAL) -> None:
        self.scope = scope
        self._interval = interval
        self._hooks = hooks.for_this_python()
        self._lock = threading.Lock()
        self._on = threading.Event()
        self._closed = False
        self._provider, self._entry, self._return = declare()
        # A tracer may be attached already: a command started by usdtkit waits in load() until its
        # probes are attached, and its first calls must be seen, not those after the first poll.
        traced_now = self._is_traced()
        if traced_now:
            self._switch(True, this_thread=True)
        self._watcher = self._start_watcher(traced_now=traced_now)

    def _start_watcher(self, prepare: Optional[Callable[[], None]] = None, traced_now: bool = False) -> Watcher:
        watcher = Watcher(self._is_traced, self._switch, self._hooks.refresh, self._interval, prepare, traced_now)
        watcher.start()
        return watcher

    def _is_traced(self) -> bool:
        return bool(self._entry.enabled) or bool(self._return.enabled)

    def _switch(self, on: bool, this_thread: bool = False) -> None:
        """Hooks on or off; on from the watcher's thread (every thread but it) or, at start, from the
        program's (``this_thread``)."""
        with self._lock:
            if self._closed:
                return
            if not on:
                self._on.clear()
                self._hooks.off()
                return
            try:
                self._hooks.on(Decider(self.scope), self._entry, self._return, this_thread)
            except BaseException:
                self._hooks.off()
                raise
            self._on.set()

    @property
    def hooks(self) -> str:
        """What the hooks are: ``sys.setprofile`` (3.11) or ``sys.monitoring`` (3.12+)."""
        return self._hooks.name

    @property
    def traced(self) -> bool:
        """True while the hooks are on (a tracer is attached to one of the probes)."""
        return self._on.is_set()

    def wait_traced(self, timeout: Optional[float] = None) -> bool:
        """Wait until the hooks are on; False if ``timeout`` seconds passed first."""
        return self._on.wait(timeout)

    @property
    def probes(self) -> Tuple[Probe, Probe]:
        """The two probes, ``function__entry`` and ``function__return`` (``probe.enabled`` says if traced)."""
        return self._entry, self._return

    @property
    def path(self) -> Optional[str]:
        """The provider's object, as tracers can name it (``usdt:PATH:pycalls:function__return``)."""
        return self._provider.path

    def close(self) -> None:
        """Hooks off, watcher stopped, provider unloaded."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._on.clear()
            self._hooks.close()
        self._watcher.stop()
        self._provider.close()

    def restart_in_child(self) -> None:
        """In a child just forked (one thread, the GIL held): hooks off, and a provider of its own.

        The child inherits the parent's mapping of the provider with the parent's semaphore counts,
        which the kernel does not adjust: a tracer attached to the parent by pid leaves a count in
        the child that no detach will ever take back, and the hooks would stay on for good.  So
        the child drops that mapping and loads the object anew, with counts that are its own (0,
        or the tracers attached to every process that maps the file); ``-p CHILD`` then traces it
        like any process.  Frames the child inherited in progress are not on the new stacks, so
        their returns fire nothing.  Only the hooks are turned off here; the reload (milliseconds:
        a file checked, objects unmapped and mapped) is the new watcher's first task, so a child
        that runs ``exec`` at once does not wait for it.
        """
        self._lock = threading.Lock()
        self._on = threading.Event()
        self._hooks.off()
        self._watcher = self._start_watcher(prepare=self._reload)

    def _reload(self) -> None:
        old = self._provider
        old.close()
        self._provider, self._entry, self._return = declare()
