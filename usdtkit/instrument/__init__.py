"""Python functions as USDT probes, free until traced.

``python -m usdtkit.instrument app.py`` (or ``-m package.module``) runs a program unmodified, as
``python app.py`` would, with its own functions turned into two USDT probes of a runtime provider
(:mod:`usdtkit.provider`) named ``pycalls``::

    pycalls:function__entry(function, file, line, depth)
    pycalls:function__return(function, file, line, depth, total_ns, self_ns)

``function`` is ``module:qualname`` (``app.models:Order.save``), ``file`` and ``line`` where the
code starts, ``depth`` how many instrumented calls the thread is in, ``total_ns`` the call's wall time
and ``self_ns`` that minus the time of its instrumented callees.  Any USDT tracer attaches to them by
pid (``usdtkit count -p PID --by 'str(arg0)' usdt::pycalls:function__return``, ``usdtkit pycalls -p
PID``, bpftrace).

While nobody traces, nothing runs per call: no profile function, no monitoring event.  A daemon
thread reads the probes' semaphores ten times a second (:mod:`.watcher`); when a tracer attaches it
turns the hooks on (:mod:`.setprofile` on 3.11, :mod:`.monitoring` on 3.12+), when the last one
leaves it turns them off.  Which functions are instrumented is the scope (:mod:`.scope`): by default
the program's own code, not the standard library nor installed packages.

From inside a service (a gunicorn hook, the top of the app module)::

    import usdtkit.instrument
    usdtkit.instrument.enable()                      # or enable(include=["myapp.*"])

Workers forked later are instrumented too (:mod:`.forking`).  A Python process started with
``USDTKIT_INSTRUMENT=1`` in its environment is instrumented by ``import usdtkit.instrument.bootstrap``
(put it where the service starts; without the variable it does nothing); ``python -m
usdtkit.instrument`` sets the variable for the programs it starts, with ``USDTKIT_INSTRUMENT_INCLUDE``
and ``USDTKIT_INSTRUMENT_EXCLUDE`` (comma-separated globs) carrying its scope, which :func:`enable`
reads when it is given none.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ..errors import InstrumentError, ProviderError

if TYPE_CHECKING:
    from .instrumentation import Instrumentation

__all__ = ["ENTRY", "PROVIDER", "RETURN", "Instrumentation", "current", "disable", "enable",
           "enable_from_environment"]

ENABLE_VARIABLE = "USDTKIT_INSTRUMENT"
INCLUDE_VARIABLE = "USDTKIT_INSTRUMENT_INCLUDE"
EXCLUDE_VARIABLE = "USDTKIT_INSTRUMENT_EXCLUDE"

_lock = threading.Lock()
_current: Optional[Instrumentation] = None


def _globs_from(variable: str) -> Sequence[str]:
    return [glob.strip() for glob in os.environ.get(variable, "").split(",") if glob.strip()]


def _default_root() -> str:
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return os.path.dirname(os.path.abspath(main_file)) if main_file else os.getcwd()


def enable(include: Optional[Sequence[str]] = None, exclude: Optional[Sequence[str]] = None,
           root: Optional[str] = None) -> Instrumentation:
    """Instrument this process: declare the ``pycalls`` provider and start watching for tracers.

    ``include``/``exclude``: globs on ``module:qualname`` (None: those of ``USDTKIT_INSTRUMENT_INCLUDE``
    and ``USDTKIT_INSTRUMENT_EXCLUDE``); ``root``: the application's folder of the default scope (the
    ``__main__`` script's folder, else the current directory).  Already enabled, it returns the
    instrumentation in place unchanged (the first scope wins; :func:`disable` first to change it).
    Raises :class:`InstrumentError` (or :class:`~usdtkit.errors.ProviderError`) when it cannot work here.
    """
    global _current
    with _lock:
        if _current is None:
            # Imported here: a process that imports the bootstrap without the variable set, or never
            # enables, does not load the provider's modules.
            from .instrumentation import Instrumentation
            from .scope import Scope

            _watch_process_once()
            scope = Scope(_globs_from(INCLUDE_VARIABLE) if include is None else include,
                          _globs_from(EXCLUDE_VARIABLE) if exclude is None else exclude,
                          root or _default_root())
            _current = Instrumentation(scope)
        return _current


def enable_from_environment() -> Optional[Instrumentation]:
    """:func:`enable` if ``USDTKIT_INSTRUMENT=1``, else None.  A service must not fail to start
    because it cannot be instrumented: the reason is printed on stderr and None returned."""
    if os.environ.get(ENABLE_VARIABLE) != "1":
        return None
    try:
        return enable()
    except (InstrumentError, ProviderError) as exc:
        print(f"usdtkit.instrument: {exc}; running without instrumentation", file=sys.stderr)
        return None


def current() -> Optional[Instrumentation]:
    """The instrumentation of this process, None if not enabled."""
    return _current


def disable() -> None:
    """Stop instrumenting this process (hooks off, provider unloaded).  Also done at exit."""
    global _current
    with _lock:
        instrumentation, _current = _current, None
    if instrumentation is not None:
        instrumentation.close()


def _forget() -> None:
    global _current
    _current = None


def _reset_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()


_watching: list = []


def _watch_process_once() -> None:
    """Forks and exit: registered at the first :func:`enable` (with ``_lock`` held)."""
    if not _watching:
        from .forking import watch_forks

        _watching.append(True)
        watch_forks(current, _forget)
        atexit.register(disable)


os.register_at_fork(after_in_child=_reset_lock_in_child)


def __getattr__(name: str) -> Any:
    if name in ("ENTRY", "PROVIDER", "RETURN", "Instrumentation"):
        from . import instrumentation

        return getattr(instrumentation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
