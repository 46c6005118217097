"""The enabled view: a probe's USDT semaphore, read in place.

A USDT semaphore is a 16-bit counter next to the probe in the loaded object.  The kernel increments
it for every tracer that attaches to the probe (uprobes with a reference counter) and decrements it
on detach, so "nonzero" means "someone is listening" and the program can skip preparing arguments
otherwise.  :class:`Semaphore` is a ctypes view of those two bytes: its truth test is a C-level read
of the memory, with no Python call.
"""
from __future__ import annotations

import ctypes


class Semaphore(ctypes.c_uint16):
    """Live view of a probe's 16-bit USDT semaphore (what :attr:`Probe.enabled` holds).

    Truthy while at least one tracer has the probe enabled; the truth test is ctypes' C-level
    compare of the two bytes, so ``if probe.enabled:`` costs no Python call.  ``int()`` gives the
    count of attached tracer probes.  Read ``probe.enabled`` each time: after ``unload()`` or
    ``close()`` the probe holds a new, disabled view, while a view kept from before still reads the
    old object's semaphore (it keeps that object mapped until it is dropped).

    Compared with an int (or another view) it is its count: ``probe.enabled == 2``.  Compared with
    a bool it is its truth, as the name ``enabled`` reads: ``probe.enabled == True`` with 2 tracers.
    """

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, bool):
            return bool(self) is other
        if isinstance(other, Semaphore):
            return self.value == other.value
        if isinstance(other, int):
            return self.value == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Semaphore enabled={bool(self)} count={self.value}>"
