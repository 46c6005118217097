"""Resolve a :class:`ProbeRef` to the call sites a uprobe must be placed on.

``usdt::PROVIDER:NAME`` with neither binary nor PID searches every running process (runtime providers
declared with :mod:`usdtkit.provider`, for instance).

A USDT probe resolves to every call site in its notes (each with its own argument spec and the
semaphore's file offset); a uprobe to one function's file offset plus an optional offset; an address to
its file offset.  With a PID, the binary is looked up among the objects the process maps, and the file
is opened through ``/proc/PID/root`` or ``/proc/PID/map_files`` so targets in containers and memfd
objects work.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .. import elf
from ..elf.model import Arg, UsdtProbe
from ..errors import NoSuchProcess, ProbeNotFound, TargetError, UsageError, UsdtkitError
from .probes import ProbeRef

MAX_ARGS = 12  # USDT allows 12 arguments (sys/sdt.h); uprobe entry arguments: 6 registers


@dataclass(frozen=True)
class Site:
    """One place to put a uprobe: the file, the offset, and what to read there."""

    path: str
    file_offset: int
    pc: int
    ref_ctr_offset: int = 0
    args: Tuple[Arg, ...] = ()
    pid: Optional[int] = None  # attach for this process only (objects without a shared path)


@dataclass(frozen=True)
class ResolvedProbe:
    ref: ProbeRef
    binary: str
    sites: Tuple[Site, ...]
    arg_count: int

    @property
    def label(self) -> str:
        """The name events and results carry: ``provider:name`` or the function."""
        if self.ref.is_usdt:
            return f"{self.ref.provider}:{self.ref.name}" if self.ref.provider else self.ref.name
        return str(self.ref).split(":", 2)[2]


def _pid_objects(pid: int) -> List["elf.MappedObject"]:
    if not os.path.exists(f"/proc/{pid}"):
        raise NoSuchProcess(pid)
    return elf.process_objects(pid)


def _same_binary(wanted: str, mapped_path: str) -> bool:
    if os.path.isabs(wanted) or "/" in wanted:
        return os.path.realpath(wanted) == os.path.realpath(mapped_path) or wanted == mapped_path
    base = os.path.basename(mapped_path)
    stem = wanted if wanted.startswith("lib") or wanted.startswith("ld") else f"lib{wanted}"
    return base == wanted or base.startswith(stem + ".") or base.startswith(stem + "-")


def _all_process_objects() -> List[Tuple[str, str, Optional[int]]]:
    """Every distinct ELF object mapped by any process: ``(path, open path, pid or None)``.

    A file is listed once (attached by path, a uprobe covers every process mapping it, even later
    ones); an object without a usable path (memfd, deleted file) is listed per process with its pid.
    """
    seen = set()
    out: List[Tuple[str, str, Optional[int]]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            objects = elf.process_objects(int(entry))
        except UsdtkitError:
            continue  # vanished, kernel thread, or not ours to read
        for obj in objects:
            per_process = obj.memfd or obj.deleted
            key = (obj.device, obj.inode, obj.pid if per_process else None)
            if key in seen:
                continue
            seen.add(key)
            out.append((obj.path, obj.open_path, obj.pid if per_process else None))
    return out


def _candidates(ref: ProbeRef, pid: Optional[int]) -> List[Tuple[str, str]]:
    """``(display path, path to open)`` of the objects to search for ``ref``."""
    if pid is None:
        if not ref.binary:
            raise UsageError(f"probe {ref}: no binary given; name one or pass a PID")
        path = elf.resolve_target(ref.binary)
        return [(path, path)]
    objects = _pid_objects(pid)
    chosen = [o for o in objects if not ref.binary or _same_binary(ref.binary, o.path)]
    if ref.binary and not chosen:
        raise TargetError(f"pid {pid} does not map {ref.binary}")
    return [(o.path, o.open_path) for o in chosen]


def _check_args(probe: UsdtProbe) -> int:
    counts = {len(loc.args) for loc in probe.locations}
    if len(counts) > 1:
        raise ProbeNotFound(
            f"{probe.binary}: {probe.qualified_name} has call sites with different argument counts "
            f"{sorted(counts)}"
        )
    return counts.pop() if counts else 0


def _probes_of(open_path: str) -> List[UsdtProbe]:
    try:
        return elf.read_usdt_probes(open_path)
    except UsdtkitError:
        return []  # unreadable objects of other processes are not the user's target


def _resolve_everywhere(ref: ProbeRef) -> ResolvedProbe:
    """``usdt::PROVIDER:NAME`` without a PID: the probe in every process that has it loaded."""
    sites: List[Site] = []
    counts = set()
    binary = ""
    for shown, open_path, owner in _all_process_objects():
        for probe in _probes_of(open_path):
            if probe.name == ref.name and probe.provider == ref.provider:
                counts.add(_check_args(probe))
                binary = binary or shown
                for loc in probe.locations:
                    sites.append(Site(open_path, loc.file_offset, loc.pc, loc.semaphore_offset or 0, loc.args,
                                      pid=owner))
    if not sites:
        raise ProbeNotFound(f"no running process has USDT probe {ref.provider}:{ref.name} loaded")
    if len(counts) > 1:
        raise ProbeNotFound(f"{ref}: processes disagree on the argument count {sorted(counts)}")
    return ResolvedProbe(ref, binary, tuple(sites), counts.pop())


def _resolve_usdt(ref: ProbeRef, pid: Optional[int]) -> ResolvedProbe:
    if pid is None and not ref.binary and ref.provider:
        return _resolve_everywhere(ref)
    matches: List[Tuple[str, UsdtProbe]] = []
    for shown, open_path in _candidates(ref, pid):
        for probe in (elf.read_usdt_probes(open_path) if ref.binary else _probes_of(open_path)):
            if probe.name == ref.name and (ref.provider is None or probe.provider == ref.provider):
                matches.append((open_path, probe))
    if not matches:
        where = ref.binary or f"pid {pid}"
        raise ProbeNotFound(f"{where}: no USDT probe {ref.provider + ':' if ref.provider else ''}{ref.name}")
    providers = {p.provider for _, p in matches}
    if ref.provider is None and len(providers) > 1:
        raise UsageError(f"probe {ref}: ambiguous, provided by {', '.join(sorted(providers))}")
    sites: List[Site] = []
    arg_counts = set()
    for open_path, probe in matches:
        arg_counts.add(_check_args(probe))
        for loc in probe.locations:
            sites.append(Site(open_path, loc.file_offset, loc.pc, loc.semaphore_offset or 0, loc.args))
    if len(arg_counts) > 1:
        raise ProbeNotFound(f"{ref}: objects disagree on the argument count {sorted(arg_counts)}")
    provider = ref.provider or providers.pop()
    full = ProbeRef(ref.kind, ref.binary, ref.name, provider)
    return ResolvedProbe(full, matches[0][1].binary, tuple(sites), arg_counts.pop())


def _resolve_function(ref: ProbeRef, pid: Optional[int]) -> ResolvedProbe:
    candidates = _candidates(ref, pid)
    if pid is not None and not ref.binary:
        candidates = candidates[:1]  # the main executable, as bpftrace does
    errors = []
    for shown, open_path in candidates:
        try:
            if ref.address is not None:
                offset = elf.address_to_offset(open_path, ref.address)
                pc = ref.address
            else:
                symbol = elf.find_symbol(open_path, ref.name)
                if ref.offset and symbol.size and ref.offset >= symbol.size:
                    raise UsageError(f"{ref}: offset {ref.offset:#x} is past the end of {ref.name} "
                                     f"({symbol.size} bytes)")
                offset, pc = symbol.file_offset + ref.offset, symbol.address + ref.offset
        except ProbeNotFound as exc:
            errors.append(str(exc))
            continue
        return ResolvedProbe(ref, shown, (Site(open_path, offset, pc),), 6 if ref.kind == "uprobe" else 0)
    raise ProbeNotFound(errors[0] if errors else f"{ref}: not found")


def resolve(ref: ProbeRef, pid: Optional[int] = None) -> ResolvedProbe:
    """Find every call site of ``ref`` (in ``pid``'s objects when given)."""
    if ref.is_usdt:
        return _resolve_usdt(ref, pid)
    return _resolve_function(ref, pid)
