"""What one run found: an :class:`AttachPlan` resolved from a :class:`TraceRequest`.

The plan holds the request, every probe resolved to call sites on opened files (:mod:`.objects`) with
the argument specs of each site, and the target pid.  It checks the request against what was found
(``arg3`` of a probe with two arguments, ``str(arg0)`` of a number, ``retval`` of a uprobe) and owns
the open files until :meth:`AttachPlan.close`.  Making a plan again from the same request is how a
long-running trace follows a restarted target.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ..errors import NoSuchProcess, TargetError, UsageError
from ..expr.fields import Field
from ..expr.filters import Filter
from ..expr.tree import Node, both, conjuncts
from .cgroups import cgroup_id
from .objects import ObjectTable
from .refs import ProbeRef
from .request import Target, TraceRequest
from .resolve import ResolvedProbe, distinct, expand, maps_binary, resolving

X86_PARAM_REGISTERS = 6  # uprobe entry arguments: rdi, rsi, rdx, rcx, r8, r9


def pointer_like(probe: ResolvedProbe, index: int) -> bool:
    """Whether argument ``index`` can hold a pointer at every site (unsigned 8 bytes; any uprobe arg)."""
    if probe.ref.kind == "uprobe":
        return index < X86_PARAM_REGISTERS
    if not probe.ref.is_usdt or index >= probe.arg_count:
        return False
    return all(index < len(s.args) and s.args[index].size == 8 and not s.args[index].signed
               for s in probe.sites)


def _check_field(fld: Field, probe: ResolvedProbe, role: str, latency: bool) -> None:
    """Refuse a field that the probe where it is read cannot provide (never read it as 0)."""
    label = probe.label
    if fld.argument is not None:
        if fld.index >= probe.arg_count:
            raise UsageError(f"{role} {fld}: {label} has {probe.arg_count} argument(s)")
        if fld.name == "str" and not pointer_like(probe, fld.index):
            raise UsageError(f"{role} {fld}: argument {fld.index} of {label} is not a pointer "
                             "(a string argument is an unsigned 8-byte value)")
    elif fld.name == "retval" and not probe.ref.is_return:
        raise UsageError(f"{role} retval: {label} is not a uretprobe")
    elif fld.name == "latency" and not latency:
        raise UsageError(f"{role} latency: only latency traces (latency=True) measure it")


@dataclass(eq=False)
class AttachPlan:
    """A request resolved against the binaries and processes of this moment."""

    request: TraceRequest
    probes: Tuple[ResolvedProbe, ...]
    pid: Optional[int] = None
    objects: ObjectTable = field(default_factory=ObjectTable)

    cgroup_id: Optional[int] = None  # the target cgroup's id at the time of planning

    def __post_init__(self) -> None:
        if not self.probes:
            raise UsageError("a plan resolves at least one probe")
        self._check_fields()

    @property
    def filters(self) -> Tuple[Filter, ...]:
        """The request's filters (the target's cgroup is kept apart: a per-run value, see ``cgroup_id``)."""
        return self.request.filters

    # The request's options, read where the plan is used (code generation, readout).
    events = property(lambda self: self.request.events)
    event_strings = property(lambda self: self.request.event_strings)
    string_size = property(lambda self: self.request.string_size)
    count_by = property(lambda self: self.request.count_by)
    hist = property(lambda self: self.request.hist)
    function_latency = property(lambda self: self.request.function_latency)
    pair = property(lambda self: self.request.pair)
    stacks = property(lambda self: self.request.stacks)
    ring_pages = property(lambda self: self.request.ring_pages)
    needs_stacks = property(lambda self: self.request.needs_stacks)
    latency = property(lambda self: self.request.latency)
    follow = property(lambda self: self.request.target.follow)

    def filter_for(self, index: int) -> Optional[Node]:
        """The condition probe ``index`` applies (None: keep every hit).  In a function latency trace
        arguments exist at entry and retval at return: each term of a top-level ``&&`` applies on the
        side whose values it reads (both sides for terms reading neither)."""
        terms = [term for f in self.filters for term in conjuncts(f.root)]
        if self.function_latency:
            probe = self.probes[index]
            reads = [{f.name for f in term.fields()} for term in terms]
            terms = [term for term, names in zip(terms, reads)
                     if not (names & ({"arg", "str"} if probe.ref.is_return else {"retval"}))]
        return both(tuple(terms))

    def handler_indexes(self) -> Tuple[int, ...]:
        """Indexes of the probes where counts, histograms and events are taken (the done/return side of
        a latency trace, every probe otherwise)."""
        if self.pair is not None:
            return (self.pair.done,)
        if self.function_latency:
            return tuple(i for i, p in enumerate(self.probes) if p.ref.is_return)
        return tuple(range(len(self.probes)))

    def start_indexes(self) -> Tuple[int, ...]:
        """Indexes of the probes where a latency starts (the start probe, a function's entry)."""
        if self.pair is not None:
            return (self.pair.start,)
        if self.function_latency:
            return tuple(i for i, p in enumerate(self.probes) if not p.ref.is_return)
        return ()

    def handler_probes(self) -> Tuple[ResolvedProbe, ...]:
        """The probes where counts, histograms and events are taken."""
        return tuple(self.probes[i] for i in self.handler_indexes())

    def labels(self) -> List[str]:
        """One distinct name per probe for results.  In a function latency trace the return side, where
        times are taken, is named after the function and the entry side ``func:entry``; probes that
        would share a name get their binary's name appended."""
        labels = [p.label for p in self.probes]
        if self.function_latency:
            for i, probe in enumerate(self.probes):
                labels[i] = probe.name if probe.ref.is_return else f"{probe.name}:entry"
        for label in list(labels):
            if labels.count(label) > 1:
                labels = [f"{lab} [{os.path.basename(self.probes[j].binary)}]" if lab == label else lab
                          for j, lab in enumerate(labels)]
        for i, label in enumerate(labels):
            if labels.count(label) > 1:
                labels[i] = f"{label} #{i}"
        return labels

    def close(self) -> None:
        """Close the files the plan opened (after detaching: attached uprobes hold their own reference)."""
        self.objects.close()

    def _check_filters(self) -> None:
        """Refuse a filter reading what a probe it applies to cannot provide."""
        for text in self.request.filters:
            for term in conjuncts(text.root):
                names = {f.name for f in term.fields()}
                if self.function_latency and names & {"arg", "str"} and "retval" in names:
                    raise UsageError(f"filter {str(text)!r}: arguments are read at entry and retval at return; "
                                     "join the two with a top-level && instead")
        for index, probe in enumerate(self.probes):
            condition = self.filter_for(index)
            for fld in condition.fields() if condition is not None else ():
                _check_field(fld, probe, "filter on", self.latency)

    def _check_fields(self) -> None:
        self._check_filters()
        request = self.request
        latency = request.latency
        for probe in self.handler_probes():
            for fld in request.count_by or ():
                _check_field(fld, probe, "count by", latency)
            if request.hist is not None:
                _check_field(request.hist.field, probe, "histogram of", latency)
                for by in request.hist.by_fields:
                    if not by.side:
                        _check_field(by, probe, "histogram by", latency)
                for fld in request.hist.sums:
                    _check_field(fld, probe, "histogram sum of", latency)
        for index in self.start_indexes():
            for fld in request.start_fields:
                _check_field(fld, self.probes[index], "histogram by", latency)
        for index in request.event_strings:
            if not any(pointer_like(p, index) for p in self.handler_probes()):
                raise UsageError(f"string arg{index}: no traced probe has a pointer argument {index}")
        if request.pair is not None:
            for index, keys in ((request.pair.start, request.pair.start_fields),
                                (request.pair.done, request.pair.done_fields)):
                for key in keys:
                    _check_field(key, self.probes[index], "latency key", True)


def check_process(pid: int) -> None:
    """Refuse a PID that names a thread, a kernel thread or a zombie, with what to do instead."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)
    except FileNotFoundError:
        raise NoSuchProcess(pid) from None
    except OSError as exc:
        raise TargetError(f"pid {pid}: cannot read its status: {exc.strerror}") from None
    tgid = status.get("Tgid", "").strip()
    if tgid and tgid != str(pid):
        raise UsageError(f"pid {pid} is a thread of process {tgid}: trace -p {tgid} (and filter on 'tid == {pid}')")
    try:
        with open(f"/proc/{pid}/maps") as maps:
            empty = not maps.read(1)
    except OSError:
        empty = False
    if empty:
        state = status.get("State", "").strip()
        what = "a zombie" if state.startswith("Z") else "a kernel thread"
        raise TargetError(f"pid {pid} has no address space ({what}): nothing to probe")


def _resolved_in(ref: ProbeRef, pid: Optional[int], target: Target) -> Optional[int]:
    """The process whose mappings hold ``ref``'s binary.  Following children, a binary the target does
    not map (one only its descendants run, as under a shell) is found by its path."""
    if pid is not None and target.follow and ref.binary and not maps_binary(pid, ref.binary):
        return None
    return pid


def _check_limit(request: TraceRequest, count: int) -> None:
    """Refuse more probes than the request allows (each costs kernel memory and attach time)."""
    if count <= request.max_probes:
        return
    patterns = [str(ref) for ref in request.probes if ref.is_pattern]
    named = f"{', '.join(patterns)} match" if patterns else "the probe specs name"
    raise UsageError(f"{named} {count} probes, more than the limit of {request.max_probes}: to attach them "
                     f"all, pass --max-probes {count} (max_probes={count} in Python)")


def make_plan(request: TraceRequest) -> AttachPlan:
    """Resolve every probe of ``request`` now (again at any later time, for a fresh plan)."""
    target = request.target
    in_pid = target.pid if target.resolve_in_pid else None
    if in_pid is not None:
        check_process(in_pid)
    cgroup = cgroup_id(target.cgroup) if target.cgroup is not None else None
    with resolving() as objects:
        expanded = [probe for ref in request.probes
                    for probe in expand(ref, _resolved_in(ref, in_pid, target), request.unsafe)]
        # A start/done pair is two exact probes, by position, even when they are one probe.
        resolved = tuple(expanded if request.pair is not None else distinct(expanded))
        _check_limit(request, len(resolved))
        used = [site.obj for probe in resolved for site in probe.sites if site.obj is not None]
        objects.keep_only(used)
        try:
            return AttachPlan(request, resolved, target.pid, objects, cgroup)
        except BaseException:
            objects.close()
            raise
