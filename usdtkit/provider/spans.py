"""Probe pairs around a block or a call: spans (``with span():``) and the ``traced`` decorator.

Both fire a start probe with a fresh id, then a done probe with the same id, the elapsed time in
nanoseconds and whether an exception escaped, so a tracer can match the pair by id (also across
``await``) and needs no clock of its own.  Untraced, they cost the two semaphore reads.
"""
from __future__ import annotations

import functools
import itertools
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

if TYPE_CHECKING:
    from .provider import Probe

ids = itertools.count(1)  # call and span ids; next() on it is atomic under the GIL

F = TypeVar("F", bound=Callable[..., Any])


class Span:
    """A pair of probes around a block: ``with span() as span_id:`` fires ``<name>_start(id)`` on
    entry and ``<name>_done(id, duration_ns, raised)`` on exit (also for ``async with``)."""

    __slots__ = ("name", "start", "done")

    def __init__(self, name: str, start: "Probe", done: "Probe") -> None:
        self.name = name
        self.start = start
        self.done = done

    def __call__(self) -> "SpanScope":
        return SpanScope(self.start, self.done)

    def __repr__(self) -> str:
        return f"<Span {self.start.provider.name}:{self.name}>"


class SpanScope:
    """One use of a :class:`Span`; ``__enter__`` returns its id (unique in the process)."""

    __slots__ = ("_start", "_done", "_t0", "id")

    def __init__(self, start: "Probe", done: "Probe") -> None:
        self._start = start
        self._done = done
        self._t0: Optional[int] = None
        self.id = next(ids)

    def __enter__(self) -> int:
        if self._start.enabled or self._done.enabled:
            self._start.fire(self.id)
            self._t0 = time.perf_counter_ns()
        return self.id

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        t0 = self._t0
        if t0 is not None:
            self._t0 = None
            self._done.fire(self.id, time.perf_counter_ns() - t0, exc_type is not None)

    async def __aenter__(self) -> int:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


def wrap(func: F, entry: "Probe", ret: "Probe") -> F:
    """``func`` (sync or async) wrapped with ``entry(id)`` and ``ret(id, duration_ns, raised)``."""
    import inspect  # here: importing it costs ~10 ms, and every process that loads a provider pays at start

    clock = time.perf_counter_ns
    counter = ids

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not (entry.enabled or ret.enabled):
                return await func(*args, **kwargs)
            call_id = next(counter)
            entry.fire(call_id)
            t0 = clock()
            raised = True
            try:
                result = await func(*args, **kwargs)
                raised = False
                return result
            finally:
                ret.fire(call_id, clock() - t0, raised)

        wrapper: Any = async_wrapper
    else:

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not (entry.enabled or ret.enabled):
                return func(*args, **kwargs)
            call_id = next(counter)
            entry.fire(call_id)
            t0 = clock()
            raised = True
            try:
                result = func(*args, **kwargs)
                raised = False
                return result
            finally:
                ret.fire(call_id, clock() - t0, raised)

        wrapper = sync_wrapper
    wrapper.entry_probe = entry
    wrapper.return_probe = ret
    return wrapper  # type: ignore[no-any-return]
