"""The hooks on Python 3.12 and later: ``sys.monitoring`` (PEP 669).

One monitoring tool receives six events for every thread at once: ``PY_START`` and ``PY_RESUME``
(a frame starts, a generator or coroutine resumes) and ``PY_THROW`` (one resumes with an exception
thrown in) are entries; ``PY_RETURN``, ``PY_YIELD`` (yield and await) and ``PY_UNWIND`` (an exception
leaves the frame) are returns.  For code out of scope the first four answer ``DISABLE``, which
switches that event off at that place in the code for good, so such code costs nothing after its
first call; ``PY_THROW`` and ``PY_UNWIND`` cannot be disabled and cost a dict lookup each.

The tool id is 4 or 3, ids no standard tool claims: cProfile (``PROFILER_ID``), coverage and
debuggers keep theirs.  It is taken the first time the hooks turn on and kept until :meth:`close`:
a place disabled for an id stays disabled even after the id is freed, for whoever takes it next,
so the id is given back only with ``sys.monitoring.restart_events()``, which re-enables what was
disabled (and the first time the hooks turn on they call it too, for places an earlier user of the
id disabled).  While the hooks are off the tool has no events: ``sys.monitoring.get_events(id)`` is 0.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Tuple

from ..errors import InstrumentError
from ..provider import Probe
from .calls import Enter, make_calls
from .scope import Decider

TOOL_IDS = (4, 3)
TOOL_NAME = "usdtkit.instrument"


class MonitoringHooks:
    """Turns the monitoring tool on (:meth:`on`) and off."""

    name = "sys.monitoring"

    def __init__(self) -> None:
        self._tool: Optional[int] = None
        self._events: Tuple[int, ...] = ()

    def on(self, decider: Decider, entry: Probe, ret: Probe, this_thread: bool = False) -> None:
        monitoring: Any = sys.monitoring  # type: ignore[attr-defined]
        events = monitoring.events
        tool = self._tool
        if tool is None:
            tool = next((tool for tool in TOOL_IDS if monitoring.get_tool(tool) is None), None)
            if tool is None:
                used = ", ".join(f"{t}: {monitoring.get_tool(t)}" for t in TOOL_IDS)
                raise InstrumentError(f"no sys.monitoring tool id is free for usdtkit.instrument ({used})")
            monitoring.use_tool_id(tool, TOOL_NAME)
            monitoring.restart_events()
            self._tool = tool
        enter, leave = make_calls(entry, ret)
        cache = decider.cache
        frame_of = sys._getframe
        disable = monitoring.DISABLE

        def local(action: Enter) -> Callable[..., Any]:
            """A callback for PY_START, PY_RESUME, PY_RETURN or PY_YIELD: it may answer DISABLE."""

            def callback(code: Any, offset: int, *value: Any) -> Any:
                info = cache.get(code, decider)
                if info is decider:
                    info = decider(code, frame_of(1).f_globals)
                if info is None:
                    return disable
                action(info)
                return None

            return callback

        def other(action: Enter) -> Callable[..., None]:
            """A callback for PY_THROW or PY_UNWIND, which cannot be disabled."""

            def callback(code: Any, offset: int, exception: BaseException) -> None:
                info = cache.get(code, decider)
                if info is decider:
                    info = decider(code, frame_of(1).f_globals)
                if info is not None:
                    action(info)

            return callback

        started, stopped = local(enter), local(leave)
        callbacks = {events.PY_START: started, events.PY_RESUME: started, events.PY_THROW: other(enter),
                     events.PY_RETURN: stopped, events.PY_YIELD: stopped, events.PY_UNWIND: other(leave)}
        mask = 0
        for event, callback in callbacks.items():
            monitoring.register_callback(tool, event, callback)
            mask |= event
        self._events = tuple(callbacks)
        monitoring.set_events(tool, mask)

    def refresh(self) -> None:
        """Nothing to do: monitoring covers every thread, old and new."""

    def off(self) -> None:
        if self._tool is None:
            return
        monitoring: Any = sys.monitoring  # type: ignore[attr-defined]
        monitoring.set_events(self._tool, 0)
        for event in self._events:
            monitoring.register_callback(self._tool, event, None)
        self._events = ()

    def close(self) -> None:
        """Off for good: the tool id is given back, with what it disabled re-enabled."""
        self.off()
        tool, self._tool = self._tool, None
        if tool is not None:
            monitoring: Any = sys.monitoring  # type: ignore[attr-defined]
            monitoring.free_tool_id(tool)
            monitoring.restart_events()
