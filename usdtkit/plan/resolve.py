"""Resolve a :class:`ProbeRef` to the call sites a uprobe must be placed on.

``usdt::PROVIDER:NAME`` with neither binary nor PID searches every running process (runtime providers
declared with :mod:`usdtkit.provider`, for instance).  A pattern (``usdt:BIN:hello:*``,
``uprobe:libc:mall*``) resolves to every probe or function it matches (:mod:`.matching`), each a
:class:`ResolvedProbe` of its own, sorted by name.

A USDT probe resolves to every call site in its notes (each with its own argument spec and the
semaphore's file offset); a uprobe to one function's file offset plus an optional offset; an address to
its file offset.  With a PID, the binary is looked up among the objects the process maps, and the file
is opened through ``/proc/PID/root`` or ``/proc/PID/map_files`` so targets in containers and memfd
objects work.

Every binary is opened once (:mod:`.objects`) and both read and attached through that open file, so
renaming another file over its path between the two changes nothing.  A resolution runs inside
:func:`resolving`, which owns the files it opened until the caller takes them.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar

from .. import elf
from ..elf.model import Arg, UsdtProbe
from ..elf.suggest import close_names, did_you_mean, near_probes
from ..errors import NoSuchProcess, ProbeNotFound, TargetError, UsageError, UsdtkitError
from ..elf.process import parse_device
from .matching import function_labels, matching_functions, usdt_matcher
from .objects import ObjectFile, ObjectTable
from .refs import ProbeRef

T = TypeVar("T")


@dataclass(frozen=True)
class Site:
    """One place to put a uprobe: the file, the offset, and what to read there.

    ``path`` names the file for people; ``obj`` (when resolved from a real file) is the open file the
    uprobe is attached to."""

    path: str
    file_offset: int
    pc: int
    ref_ctr_offset: int = 0
    args: Tuple[Arg, ...] = ()
    pid: Optional[int] = None  # attach for this process only (objects without a shared path)
    obj: Optional[ObjectFile] = None

    @property
    def attach_path(self) -> str:
        """The name the kernel is given: the opened file itself where there is one."""
        return self.obj.proc_path if self.obj is not None else self.path

    @property
    def place(self) -> tuple:
        """Where the uprobe goes: the file (by device and inode once opened), the offset, the process."""
        where = (self.obj.device, self.obj.inode) if self.obj is not None else self.path
        return (where, self.file_offset, self.pid)


@dataclass(frozen=True)
class ResolvedProbe:
    ref: ProbeRef
    binary: str
    sites: Tuple[Site, ...]
    arg_count: int
    shown: Optional[str] = None  # a matched function's name for people (demangled, told apart from others)

    @property
    def name(self) -> str:
        """The probe's or function's name as people know it (a C++ function's demangled name)."""
        return self.shown or self.ref.name

    @property
    def at_function_entry(self) -> bool:
        """Whether the probe sits on a function's first instruction (a uprobe on a named function without
        an offset): the frame pointer there still belongs to the caller."""
        ref = self.ref
        return ref.kind == "uprobe" and ref.address is None and ref.offset == 0

    @property
    def label(self) -> str:
        """The name events and results carry: ``provider:name``, the function (``func+0x10``,
        ``0x1139``, ``ns::Cache::get(int)``), or ``func:return`` for a uretprobe."""
        if self.ref.is_usdt:
            return f"{self.ref.provider}:{self.ref.name}" if self.ref.provider else self.ref.name
        name = self.shown or str(self.ref).split(":", 2)[2]
        return f"{name}:return" if self.ref.is_return else name


class _Resolution(threading.local):
    """The state of the resolution in progress, per thread (two threads may resolve at once)."""

    cache: Optional[dict] = None
    objects: Optional[ObjectTable] = None


_state = _Resolution()


@contextlib.contextmanager
def resolving() -> Iterator[ObjectTable]:
    """Within the block, a process's mapped objects are read once (several probes of one trace resolve
    against the same snapshot) and every binary is opened once.  The yielded table holds the open
    files: the caller keeps it (and closes it when done); on an exception they are closed here."""
    previous = (_state.cache, _state.objects)
    _state.cache, _state.objects = {}, ObjectTable()
    table = _state.objects
    try:
        yield table
    except BaseException:
        table.close()
        raise
    finally:
        _state.cache, _state.objects = previous


def _table() -> ObjectTable:
    if _state.objects is None:
        raise RuntimeError("resolve() runs inside resolving()")
    return _state.objects


def _open(path: str, open_path: Optional[str] = None, device: str = "", inode: int = 0) -> ObjectFile:
    """Open a binary for this resolution (checked against the device and inode a process maps)."""
    dev = parse_device(device) if device else None
    expect = (dev, inode) if dev is not None and inode else None
    return _table().open(path, open_path, expect)


def _open_mapped(mapped: "elf.MappedObject") -> ObjectFile:
    """Open the file a process maps: by its path (through the process's root), else, where the two
    disagree (replaced on disk, or a filesystem whose maps name another device), through the mapping
    itself (``/proc/PID/map_files``), which always is the mapped file."""
    try:
        return _open(mapped.path, mapped.open_path, mapped.device, mapped.inode)
    except TargetError:
        if not mapped.mappings:
            raise
        first = mapped.mappings[0]
        return _open(mapped.path, f"/proc/{mapped.pid}/map_files/{first.start:x}-{first.end:x}")


def _pid_objects(pid: int) -> List["elf.MappedObject"]:
    cache = _state.cache
    if cache is not None and pid in cache:
        return cache[pid]
    if not os.path.exists(f"/proc/{pid}"):
        raise NoSuchProcess(pid)
    objects = elf.process_objects(pid)
    if cache is not None:
        cache[pid] = objects
    return objects


def _same_binary(wanted: str, mapped_path: str) -> bool:
    if os.path.isabs(wanted) or "/" in wanted:
        return os.path.realpath(wanted) == os.path.realpath(mapped_path) or wanted == mapped_path
    base = os.path.basename(mapped_path)
    stem = wanted if wanted.startswith("lib") or wanted.startswith("ld") else f"lib{wanted}"
    return base == wanted or base.startswith(stem + ".") or base.startswith(stem + "-")


def _all_process_objects() -> List[Tuple["elf.MappedObject", Optional[int]]]:
    """Every distinct ELF object mapped by any process, with the pid to attach for (or None).

    A file is listed once (attached by path, a uprobe covers every process mapping it, even later
    ones); an object without a usable path (memfd, deleted file) is listed per process with its pid.
    """
    seen = set()
    out: List[Tuple["elf.MappedObject", Optional[int]]] = []
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
            out.append((obj, obj.pid if per_process else None))
    return out


def _candidates(ref: ProbeRef, pid: Optional[int]) -> List[ObjectFile]:
    """The opened objects to search for ``ref``."""
    if pid is None:
        if not ref.binary:
            raise UsageError(f"probe {ref}: no binary given; name one or pass a PID")
        return [_open(elf.resolve_target(ref.binary))]
    objects = _pid_objects(pid)
    chosen = [o for o in objects if not ref.binary or _same_binary(ref.binary, o.path)]
    if ref.binary and not chosen:
        raise TargetError(f"pid {pid} does not map {ref.binary}")
    opened = []
    for mapped in chosen:
        try:
            opened.append(_open_mapped(mapped))
        except TargetError:
            if ref.binary:
                raise
            # searching every object: one that cannot be opened is not where the probe is
    return opened


def maps_binary(pid: int, binary: str) -> bool:
    """Whether process ``pid`` maps ``binary`` (a path or a library name)."""
    return any(_same_binary(binary, mapped.path) for mapped in _pid_objects(pid))


def _check_args(probe: UsdtProbe, shown: str) -> int:
    counts = {len(loc.args) for loc in probe.locations}
    if len(counts) > 1:
        raise ProbeNotFound(
            f"{shown}: {probe.qualified_name} has call sites with different argument counts "
            f"{sorted(counts)}"
        )
    return counts.pop() if counts else 0


def _named(obj: ObjectFile, read: "Callable[[str], T]") -> "T":
    """``read(obj.proc_path)``, with errors naming the file as the user knows it."""
    try:
        return read(obj.proc_path)
    except UsdtkitError as exc:
        text = str(exc).replace(obj.proc_path, obj.path)
        raise type(exc)(text) if not isinstance(exc, NoSuchProcess) else exc from None


def _probes_of(open_path: str) -> List[UsdtProbe]:
    try:
        return elf.read_usdt_probes(open_path)
    except UsdtkitError:
        return []  # unreadable objects of other processes are not the user's target


_Matches = Dict[Tuple[str, str], List[Tuple[ObjectFile, UsdtProbe, Optional[int]]]]


def _what(ref: ProbeRef) -> str:
    """``USDT probe matching hello:*`` or ``USDT probe hello:tick``, for not-found messages."""
    named = f"{ref.provider + ':' if ref.provider else ''}{ref.name}"
    return f"USDT probe matching {named}" if ref.is_pattern else f"USDT probe {named}"


def _usdt_probes(ref: ProbeRef, matches: _Matches, disagree: str) -> List[ResolvedProbe]:
    """One probe per ``provider:name`` found, sorted, with the call sites of every object holding it
    (``matches`` gives each object, its probe and the pid to attach for, if any)."""
    out = []
    for provider, name in sorted(matches):
        found = matches[(provider, name)]
        sites: List[Site] = []
        counts = set()
        for obj, probe, owner in found:
            counts.add(_check_args(probe, obj.path))
            sites += [Site(obj.path, loc.file_offset, loc.pc, loc.semaphore_offset or 0, loc.args, pid=owner,
                           obj=obj) for loc in probe.locations]
        concrete = ProbeRef(ref.kind, ref.binary, name, provider)
        if len(counts) > 1:
            raise ProbeNotFound(f"{concrete}: {disagree} disagree on the argument count {sorted(counts)}")
        out.append(ResolvedProbe(concrete, found[0][0].path, tuple(sites), counts.pop()))
    return out


def _resolve_everywhere(ref: ProbeRef) -> List[ResolvedProbe]:
    """``usdt::PROVIDER:NAME`` without a PID: the probe in every process that has it loaded."""
    wanted = usdt_matcher(ref)
    matches: _Matches = {}
    seen: List[UsdtProbe] = []
    for mapped, owner in _all_process_objects():
        try:
            obj = _open_mapped(mapped)
        except UsdtkitError:
            continue  # vanished: not a process to attach to
        found = False
        for probe in _probes_of(obj.proc_path):
            seen.append(probe)
            if wanted(probe):
                found = True
                matches.setdefault((probe.provider, probe.name), []).append((obj, probe, owner))
        if found:
            _table().use(obj)
        else:
            _table().discard(obj)  # thousands of objects are searched: keep only the fds in use
    if not matches:
        near = did_you_mean(near_probes(ref.provider, ref.name, seen))
        raise ProbeNotFound(f"no running process has a {_what(ref)} loaded{near}")
    return _usdt_probes(ref, matches, "processes")


def _resolve_usdt(ref: ProbeRef, pid: Optional[int]) -> List[ResolvedProbe]:
    if pid is None and not ref.binary and ref.provider:
        return _resolve_everywhere(ref)
    wanted = usdt_matcher(ref)
    matches: _Matches = {}
    seen: List[UsdtProbe] = []
    for obj in _candidates(ref, pid):
        for probe in (_named(obj, elf.read_usdt_probes) if ref.binary else _probes_of(obj.proc_path)):
            seen.append(probe)
            if wanted(probe):
                matches.setdefault((probe.provider, probe.name), []).append((obj, probe, None))
    if not matches:
        where = ref.binary or f"pid {pid}"
        near = did_you_mean(near_probes(ref.provider, ref.name, seen))
        raise ProbeNotFound(f"{where}: no {_what(ref)}{near}")
    providers = {provider for provider, _ in matches}
    if not ref.is_pattern and len(providers) > 1:
        raise UsageError(f"probe {ref}: ambiguous, provided by {', '.join(sorted(providers))}")
    for found in matches.values():
        for obj, _, _ in found:
            _table().use(obj)
    return _usdt_probes(ref, matches, "objects")


def _is_usdt_site(path: str, address: int) -> bool:
    return any(loc.pc == address for p in elf.read_usdt_probes(path) for loc in p.locations)


def _function_site(ref: ProbeRef, open_path: str, unsafe: bool, shown: str) -> Tuple[int, int]:
    """``(file offset, link-time address)`` of a function probe, refusing what could corrupt the target."""
    unverified = ("usdtkit cannot check that it starts an instruction, and a probe inside an instruction "
                  "corrupts the traced program; probe the function itself, or pass unsafe=True (--unsafe) "
                  "if you are sure")
    if ref.address is not None:
        # A function start or a USDT site certainly starts an instruction.
        function_start = any(f.address == ref.address for f in elf.read_functions(open_path))
        if ref.is_return and not function_start:
            raise UsageError(f"{ref}: a uretprobe must be placed at the start of a function (it replaces "
                             "the return address on the stack)")
        if not unsafe and not function_start and not _is_usdt_site(open_path, ref.address):
            raise UsageError(f"{ref}: {ref.address:#x} is not a function start or USDT site; {unverified}")
        return elf.address_to_offset(open_path, ref.address), ref.address
    symbol = elf.find_symbol(open_path, ref.name)
    if ref.offset:
        if symbol.size and ref.offset >= symbol.size:
            raise UsageError(f"{ref}: offset {ref.offset:#x} is past the end of {ref.name} ({symbol.size} bytes)")
        if not unsafe:
            raise UsageError(f"{ref}: {unverified}")
    offset = symbol.file_offset + ref.offset
    if offset >= os.path.getsize(open_path):
        raise UsageError(f"{ref}: offset {offset:#x} is past the end of {shown}")
    return offset, symbol.address + ref.offset


def _resolve_function(ref: ProbeRef, pid: Optional[int], unsafe: bool = False) -> ResolvedProbe:
    candidates = _candidates(ref, pid)
    if pid is not None and not ref.binary:
        candidates = candidates[:1]  # the main executable, as bpftrace does
    errors = []
    for obj in candidates:
        try:
            offset, pc = _named(obj, lambda where: _function_site(ref, where, unsafe, obj.path))
        except ProbeNotFound as exc:
            errors.append(str(exc))
            continue
        site = Site(obj.path, offset, pc, obj=_table().use(obj))
        return ResolvedProbe(ref, obj.path, (site,), 6 if ref.kind == "uprobe" else 0)
    raise ProbeNotFound(errors[0] if errors else f"{ref}: not found")


def _expand_functions(ref: ProbeRef, pid: Optional[int]) -> List[ResolvedProbe]:
    """Every function a pattern names, one probe per address, sorted by name."""
    candidates = _candidates(ref, pid)
    if pid is not None and not ref.binary:
        candidates = candidates[:1]  # the main executable, as bpftrace does
    out: List[ResolvedProbe] = []
    names: List[str] = []
    for obj in candidates:
        functions = _named(obj, lambda where: elf.read_functions(where, demangle=ref.cpp))
        names += [f.name for f in functions]
        matched = matching_functions(ref, functions)
        for function, shown in zip(matched, function_labels(matched)):
            site = Site(obj.path, function.file_offset, function.address, obj=_table().use(obj))
            out.append(ResolvedProbe(ProbeRef(ref.kind, ref.binary, function.name), obj.path, (site,),
                                     6 if ref.kind == "uprobe" else 0, shown))
    if not out:
        where = ref.binary or f"pid {pid}"
        near = "" if ref.cpp else did_you_mean(close_names(ref.name, names))
        raise ProbeNotFound(f"{where}: no function matches {ref.name}{near}")
    return out


def expand(ref: ProbeRef, pid: Optional[int] = None, unsafe: bool = False) -> List[ResolvedProbe]:
    """Every probe ``ref`` names, with its call sites (in ``pid``'s objects when given): the one an
    exact spec names, or each one a pattern matches.  ``unsafe`` allows uprobes at offsets and
    addresses usdtkit cannot verify to start an instruction."""
    if ref.is_usdt:
        return _resolve_usdt(ref, pid)
    if ref.is_pattern:
        return _expand_functions(ref, pid)
    return [_resolve_function(ref, pid, unsafe)]


def distinct(probes: Iterable[ResolvedProbe]) -> List[ResolvedProbe]:
    """``probes`` without repeats: a probe of the kind and at the places of an earlier one (two patterns
    naming one probe, two names of one function) is attached once, under the earlier one's name."""
    seen = set()
    out = []
    for probe in probes:
        key = (probe.ref.kind, frozenset(site.place for site in probe.sites))
        if key not in seen:
            seen.add(key)
            out.append(probe)
    return out
