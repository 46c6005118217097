"""The hooks on Python 3.11: a profile function on every thread, in C.

Python 3.11 reports calls to a profile function (``sys.setprofile``): ``call`` when a frame starts or
a generator or coroutine resumes, ``return`` when it returns, yields, awaits or is left by an
exception.  ``sys.setprofile`` only sets the calling thread's, and the hooks are turned on by the
watcher thread, so :mod:`usdtkit._native._profile` sets its profile function on every thread (as
3.12 does for ``threading.setprofile_all_threads``).  That function skips calls of C functions and
code out of scope without calling Python, and keeps the per-thread stacks and fires the probes in C
with the rules of :mod:`.calls` (which 3.12+ runs in Python): a Python function per event would
cost more than the probe's own uprobe.  Threads started later get it from ``threading.setprofile``,
and threads started without the threading module at the watcher's next poll (:meth:`refresh`).  A
thread that already runs another profiler (cProfile) is left alone.  While the hooks are off no
thread has a profile function: ``sys.getprofile()`` is None.
"""
from __future__ import annotations

import threading
from typing import Any, Optional

from ..errors import InstrumentError
from ..provider import Probe
from .scope import Decider


def _native() -> Any:
    try:
        from .._native import _profile
    except ImportError as exc:
        raise InstrumentError(
            f"usdtkit.instrument on Python 3.11 needs usdtkit's extension usdtkit._native._profile ({exc}); "
            "rebuild usdtkit with the Python headers installed (apt install python3-dev, then "
            "`pip install -e .` or `./dev.sh setup`)") from exc
    if not _profile.SUPPORTED:
        raise InstrumentError("usdtkit._native._profile was built for another Python version; rebuild usdtkit")
    return _profile


class ProfileHooks:
    """Turns the profile function on (:meth:`on`) and off on every thread of the process."""

    name = "sys.setprofile"

    def __init__(self) -> None:
        self._native = _native()
        self._hook: Optional[Any] = None
        self._new_threads: Any = None

    def on(self, decider: Decider, entry: Probe, ret: Probe, this_thread: bool = False) -> None:
        def decide(frame: Any) -> Any:
            return decider(frame.f_code, frame.f_globals)

        hook = self._hook = self._native.Hook(decider.cache, decide, entry, ret)
        native = self._native

        def new_thread(frame: Any, event: str, arg: Any) -> None:
            # threading.setprofile's function gets a new thread's first event: it puts the hook in
            # its place, and passes the hook the call it was given.
            native.install_current(hook)
            if event == "call":
                hook.call_event(frame)

        if threading.getprofile() is None:
            threading.setprofile(new_thread)
            self._new_threads = new_thread
        native.install(hook, this_thread)  # every thread but the watcher's own (``this_thread``: the caller)

    def refresh(self) -> None:
        if self._hook is not None:
            self._native.install(self._hook, False)

    def off(self) -> None:
        if self._new_threads is not None and threading.getprofile() is self._new_threads:
            threading.setprofile(None)
        self._new_threads = None
        self._hook = None
        self._native.uninstall()

    def close(self) -> None:
        self.off()
