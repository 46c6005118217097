"""Probes that a started command declares at run time: which specs wait for a declaration, and what a
declaration holds.

A command traced from its start (``trace -c CMD``, ``trace(command=...)``) has its probes attached
before its first instruction, found in its executable.  A runtime provider (:mod:`usdtkit.provider`, or
any program on usdtkit's ``libstapsdt``) is not there: it exists once the command has loaded it.  So a
spec of the form ``usdt::PROVIDER:NAME`` (a provider, no binary) that the executable lacks *waits*
(:func:`waiting`; a script's executable is the script itself, which has no probes at all).  When a
process of the command announces a loaded provider (:mod:`usdtkit.tracing.rendezvous`), :func:`declared`
finds the object among that process's mappings by device and inode, and tells which waiting specs it
holds, each bound to that object (its path in the process's mappings, as a binary), ready to plan in
that process (:func:`usdtkit.plan.plan.make_plan`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import List, Sequence, Tuple

from .. import elf
from ..elf.process import parse_device
from ..errors import ElfError, ProbeNotFound, TargetError
from .matching import names_provider
from .refs import ProbeRef
from .resolve import expand, resolving


def may_wait(ref: ProbeRef) -> bool:
    """Whether a spec may name a probe of a runtime provider: ``usdt::PROVIDER:NAME``."""
    return ref.is_usdt and not ref.binary and bool(ref.provider)


def waiting(refs: Sequence[ProbeRef], executable: str) -> Tuple[ProbeRef, ...]:
    """The specs among ``refs`` that wait for the command ``executable`` to declare them."""
    out: List[ProbeRef] = []
    with resolving() as objects:
        for ref in refs:
            if not may_wait(ref):
                continue
            try:
                expand(replace(ref, binary=executable))
            except (ProbeNotFound, ElfError, TargetError):
                out.append(ref)
    objects.close()
    return tuple(out)


def declared(refs: Sequence[ProbeRef], pid: int, provider: str, device: int,
             inode: int) -> Tuple[Tuple[ProbeRef, ProbeRef], ...]:
    """``(spec, bound spec)`` for each of ``refs`` that ``provider``, loaded by process ``pid`` as the object
    with this device and inode, declares; none when the process does not map that object (any more)."""
    named = [ref for ref in refs if names_provider(ref, provider)]
    if not named:
        return ()
    path = next((obj.path for obj in elf.process_objects(pid)
                 if obj.inode == inode and parse_device(obj.device) == device), None)
    if path is None:
        return ()
    out = []
    with resolving() as objects:
        for ref in named:
            bound = replace(ref, binary=path)
            try:
                expand(bound, pid)
            except ProbeNotFound:
                continue
            out.append((ref, bound))
    objects.close()
    return tuple(out)
