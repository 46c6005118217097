"""Pairing calls with returns, per thread, and firing the two probes (3.12+; on 3.11 the C profile
function of :mod:`usdtkit._native._profile` does the same).

Every thread keeps a stack of the instrumented frames it is running.  An entry fires
``function__entry`` at the depth the stack has, then pushes the frame with its start time; a return
pops it and fires ``function__return`` with its total time (entry to return, ``perf_counter_ns``)
and its self time (the total minus the totals of the instrumented calls it made).  A generator or a
coroutine resuming is an entry and its ``yield``/``await`` a return, as in cProfile, so every step is
timed on its own and an awaiting coroutine does not count the time it was suspended.

The hooks turn on while a program is already deep in calls, so the first returns a thread sees can
be of frames that entered before: every frame entered later has returned by then, so they find the
stack empty and fire nothing.  Each fired return therefore has its fired entry, at the same depth,
and depth counts only frames seen entering (0 is the outermost one seen).  A return whose entry is
not on top of the stack (its thread switched stacks under us, as greenlets do) ends the frames above
its entry, or fires nothing if its entry is not there at all.  Each period the hooks are on gets
fresh stacks.

The time of firing the entry and return probes themselves is left out of the frame's own total,
and lands in its caller's self time.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, List, Optional, Tuple

from ..provider import Probe
from .scope import Info

Enter = Callable[[Info], None]
Leave = Callable[[Info], None]


def make_calls(entry: Probe, ret: Probe) -> Tuple[Enter, Leave]:
    """The ``enter(info)`` and ``leave(info)`` the hooks call, with stacks of their own."""
    local = threading.local()
    clock = time.perf_counter_ns

    def enter(info: Info) -> None:
        try:
            stack = local.stack
        except AttributeError:
            stack = local.stack = []
        if entry.enabled:
            entry.fire(info[0], info[1], info[2], len(stack))
        stack.append([info, clock(), 0])

    def leave(info: Info) -> None:
        now = clock()
        try:
            stack = local.stack
        except AttributeError:
            return
        if not stack:
            return
        frame = stack.pop()
        if frame[0] is not info:
            frame = _unwind_to(stack, frame, info)
            if frame is None:
                return
        total = now - frame[1]
        if stack:
            stack[-1][2] += total
        if ret.enabled:
            ret.fire(info[0], info[1], info[2], len(stack), total, total - frame[2])

    return enter, leave


def _unwind_to(stack: List[list], top: list, info: Info) -> Optional[list]:
    """``info``'s frame, after popping ``top`` which is not it: the frames above it are dropped (their
    returns were never seen).  None, with ``top`` put back, when ``info`` has no frame here."""
    for index in range(len(stack) - 1, -1, -1):
        if stack[index][0] is info:
            frame = stack[index]
            del stack[index:]
            return frame
    stack.append(top)
    return None
