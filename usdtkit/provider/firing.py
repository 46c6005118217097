"""Firing: the generated fire function of each probe signature, and the C fast path.

A fire function reads the probe's semaphore first and returns at once when nobody traces the
probe, so a disabled probe costs one attribute read and a compare.  When enabled, it checks and
converts each argument (inline fast paths, the :mod:`.args` slow paths for anything unusual) and
calls the probe's site in the loaded object: a 5-byte NOP where tracers put their uprobe.

Everything a fire function needs lives in its probe's :class:`Slot`, which loading fills in and
unloading switches off.  The slot is read afresh at each step, never cached, so a concurrent
unload is always seen; and what it holds keeps the loaded object mapped (:mod:`.mapping`), so a
fire function that read the site just before an unload still calls mapped code.
"""
from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from .args import INT_FAST, MAX_STRING_BYTES, Arg
from .semaphore import Semaphore

if TYPE_CHECKING:
    from .provider import Probe

def noop(*args: Any) -> None:
    """Stands in for the probe function while the provider is not loaded."""


def _load_fast_fire() -> Optional[Callable[..., bool]]:
    """The optional C fast path (``usdtkit._native._fastfire``), if it was built and agrees on limits."""
    if os.environ.get("USDTKIT_NO_FAST_FIRE") == "1":
        return None
    try:
        from .._native import _fastfire
    except ImportError:
        return None
    return _fastfire.fire if _fastfire.MAX_STRING_BYTES == MAX_STRING_BYTES else None


FAST_FIRE = _load_fast_fire()
_KIND_OF_CODE = {1: "B", -1: "b", 2: "H", -2: "h", 4: "I", -4: "i", 8: "Q", -8: "q"}
_FACTORY_CACHE: Dict[Tuple[Any, ...], Callable[..., Callable[..., None]]] = {}


def _fast_kind(arg: Arg) -> int:
    if arg.kind == "str":
        return ord("s")
    if arg.kind == "bool":
        return ord("?")
    return ord(_KIND_OF_CODE[int(arg.code)])


def fire_factory(args: List[Arg]) -> Callable[..., Callable[..., None]]:
    """Generate (once per signature) a factory of specialised fire functions.

    The generated function reads ``slot.sem`` (a C-level truth test), returns at once when the
    probe is disabled, else checks each argument with inline fast paths and calls ``slot.call``,
    the ctypes prototype of the probe's function.  ``slot`` is read at each step, never cached,
    so an unload swapping it out is always seen.
    """
    key = tuple((a.kind, int(a.code)) for a in args) + ((INT_FAST, FAST_FIRE is not None),)
    factory = _FACTORY_CACHE.get(key)
    if factory is not None:
        return factory
    params = ", ".join(f"a{i}" for i in range(len(args)))
    lines = [
        "def make(slot, ctx, _int, _wide, _bool, _str, _fast=_FAST_FIRE):",
        f"    def fire({params}):",
        "        if slot.sem:",
    ]
    if FAST_FIRE is not None:
        # One C call checks, converts and fires; it declines (False) whatever needs the Python path.
        kinds = bytes(_fast_kind(a) for a in args)
        lines.append(f"            if _fast(slot.addr, {kinds!r}{', ' if args else ''}{params}): return")
    for i, arg in enumerate(args):
        a = f"a{i}"
        if arg.wide and not INT_FAST:
            lines += [f"            {a} = _wide(ctx, {i}, {a})"]
        elif arg.wide:
            low = max(arg.low, -(2**31))
            lines += [
                f"            if {a}.__class__ is not int or not {low} <= {a} <= {2**31 - 1}:",
                f"                {a} = _wide(ctx, {i}, {a})",
            ]
        elif arg.kind == "int":
            lines += [
                f"            if {a}.__class__ is not int or not {arg.low} <= {a} <= {arg.high}:",
                f"                {a} = _int(ctx, {i}, {a})",
            ]
        elif arg.kind == "bool":
            lines += [
                f"            if {a}.__class__ is not bool:",
                f"                {a} = _bool(ctx, {i}, {a})",
            ]
        else:
            # Up to MAX_STRING_BYTES // 4 characters cannot exceed the cap once encoded.
            lines += [
                f"            if {a}.__class__ is str and len({a}) <= {MAX_STRING_BYTES // 4} "
                f"and '\\x00' not in {a}:",
                f"                {a} = {a}.encode()",
                f"            elif {a}.__class__ is not bytes or 0 in {a} or len({a}) > {MAX_STRING_BYTES}:",
                f"                {a} = _str(ctx, {i}, {a})",
            ]
    lines += [f"            slot.call({params})", "    return fire"]
    namespace: Dict[str, Any] = {"_FAST_FIRE": FAST_FIRE}
    exec(compile("\n".join(lines), f"<usdtkit probe {key}>", "exec"), namespace)
    factory = _FACTORY_CACHE[key] = namespace["make"]
    return factory


class Slot:
    """Mutable state shared by a probe and its generated fire function."""

    __slots__ = ("sem", "call", "addr", "probe")

    def __init__(self, probe: "Probe") -> None:
        self.sem: Semaphore = Semaphore()
        self.call: Callable[..., None] = noop
        self.addr = 0  # the site function's address, for the C fast path (0: not loaded)
        self.probe = weakref.ref(probe)

    def switch_off(self) -> None:
        off = Semaphore()
        probe = self.probe()
        if probe is not None:
            probe.enabled = off
        self.sem = off
        self.addr = 0
        self.call = noop
