"""Generate the BPF C for an :class:`~usdtkit.plan.plan.AttachPlan`, from validated values only.

The result is a :class:`~usdtkit.bpf.layout.ProgramLayout`: the C text together with the maps, the event
record and key layouts and the entry function of every call site, so that nothing that reads the
program's output copies a declaration by hand.  The text holds no per-run value (no pid): where the
program must filter on the target process it reads the pid from its ``config`` array, which the
session fills after loading; the same text therefore names the same program shape in any run.

Layout of a generated program:

* one *entry function* per probe and distinct way of reading its arguments (call sites whose argument
  specs and relocation agree share one function; libbpf shares specs the same way), named
  ``usdtkit_pN_gM``; it sets ``probe`` to the probe's index, reads the arguments into ``u64 args[]``
  (sign-extended where the spec says signed), applies the filters and calls
* ``usdtkit_handle``, inlined, which counts the hit, then feeds the collectors: a count map keyed by the
  chosen fields, a log2 or linear histogram, the event ring buffer.
* ``stats``, a per-CPU array of five counters per probe: hits, events lost (ring buffer full), keys lost
  (map full), argument and string reads that failed, and done/return hits without a matching start
  (latency).  Nothing is dropped without being counted.

Where the kernel passes attach cookies (5.15+), the probes whose entry functions would differ only in
that index share one function, ``usdtkit_sK``, which reads the index from the cookie set on each of its
attachments (``bpf_get_attach_cookie``): a pattern matching 500 probes that are counted alike compiles,
loads and attaches one function instead of 500.

Strings (``str(argN)`` keys, event strings) keep one byte more than they show, so a string longer than
the limit is told apart from one that fits exactly and shown as cut.

What reaches the C text: integers formatted by this module, field names from a closed set, and
identifiers built here.  Probe names, paths and filter text never do.

x86_64 argument locations map to ``struct pt_regs`` fields; ``sym(%rip)`` arguments are relocated at
run time from the probe's own address: a uprobe handler sees ``ctx->ip`` equal to the call site's
runtime address, so ``symbol + off`` is ``ctx->ip + (symbol + off - site_pc)`` in any process, PIE or
shared library, without knowing the load bias.
"""
from __future__ import annotations

import os
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

from ..elf.model import Arg, Constant, Memory, Register, RegisterValue, SymbolRelative, Unsupported
from ..errors import TargetError, UsageError
from ..expr.fields import COMM_LEN, Field
from ..plan.buckets import LOG2_NEGATIVE, SUM_SLOT, sum_slot
from ..plan.plan import AttachPlan, pointer_like
from ..plan.resolve import ResolvedProbe, Site
from . import follow
from .filter_c import BUILTIN_C, FilterC, FilterHelpers, arg_signed, u64_literal
from .layout import (CALLER_MEMBER, RECORD_CALLER, STAT_LOST_EVENTS, STAT_LOST_KEYS, STAT_PAIRED, STAT_READ_ERRORS,
                     STAT_UNMATCHED, STATS_PER_PROBE, WAKE_MAP, Attachment, MapLayout, Member, ProgramLayout,
                     StructLayout, key_members, string_buffer)

COUNT_MAP_ENTRIES = 65536
STACK_MAP_ENTRIES = 16384
START_MAP_ENTRIES = 65536
_KEY_ON_STACK_MAX = 160  # bigger keys are built in a per-CPU scratch slot (the BPF stack is 512 bytes)

_X86_REGS = {
    "rax": "ax", "rbx": "bx", "rcx": "cx", "rdx": "dx", "rsi": "si", "rdi": "di", "rbp": "bp",
    "rsp": "sp", "rip": "ip", **{f"r{i}": f"r{i}" for i in range(8, 16)},
}
_X86_PARAMS = ("di", "si", "dx", "cx", "r8", "r9")
_Shape = Tuple[bool, Tuple[str, ...]]  # an entry function: whether it is a return probe, and its body


def _key_word(index: int) -> str:
    """The member of ``struct usdtkit_start_key`` holding key field ``index``."""
    return "key" if index == 0 else f"key{index}"


class UnreadableArgument(TargetError):
    """An argument location of the target that this backend cannot read; refused before attaching."""


def _reg(register: Register) -> str:
    field = _X86_REGS.get(register.name)
    if field is None:
        raise UnreadableArgument(f"register %{register.spelled or register.name} cannot be read")
    return f"ctx->{field}"


def _extend(expr: str, size: int, signed: bool) -> str:
    bits = size * 8
    if bits >= 64:
        return f"(u64)({expr})"
    if signed:
        return f"(u64)(s64)(s{bits})(u{bits})({expr})"
    return f"(u64)(u{bits})({expr})"


def read_arg(index: int, arg: Arg, site: Site) -> str:
    """C statements that set ``args[index]``, counting a failed memory read."""
    loc = arg.location
    if arg.arch not in ("x86_64",) or os.uname().machine != "x86_64":
        raise UnreadableArgument(f"argument {index} ({arg.raw}): {arg.arch} specs are not readable here")
    if arg.size not in (1, 2, 4, 8):
        raise UnreadableArgument(f"argument {index} ({arg.raw}): size {arg.size} is not 1, 2, 4 or 8")
    if isinstance(loc, Unsupported):
        raise UnreadableArgument(f"argument {index} ({arg.raw}): {loc.reason}")
    if isinstance(loc, Constant):
        return f"args[{index}] = {_extend(u64_literal(loc.value), arg.size, arg.signed)};"
    if isinstance(loc, RegisterValue):
        reg = loc.register
        value = _reg(reg)
        if reg.shift:
            value = f"({value} >> {int(reg.shift)})"
        width = min(arg.size * 8, reg.bits)
        value = f"(u64)(u{width})({value})" if width < 64 else value
        return f"args[{index}] = {_extend(value, arg.size, arg.signed)};"
    if isinstance(loc, Memory):
        address = f"{_reg(loc.base)} + {u64_literal(loc.offset)}" if loc.base is not None else u64_literal(loc.offset)
        if loc.index is not None:
            if loc.scale not in (1, 2, 4, 8):
                raise UnreadableArgument(f"argument {index} ({arg.raw}): scale {loc.scale}")
            address += f" + {_reg(loc.index)} * {int(loc.scale)}"
    elif isinstance(loc, SymbolRelative):
        if loc.address is None:
            raise UnreadableArgument(f"argument {index} ({arg.raw}): symbol {loc.symbol} not found in the "
                                     "symbol tables")
        address = f"ctx->ip + {u64_literal(loc.address - site.pc)}"
    else:  # pragma: no cover - the model has no other kinds
        raise UnreadableArgument(f"argument {index} ({arg.raw}): unknown location")
    return (
        f"{{ u64 v = 0; if (bpf_probe_read_user(&v, {arg.size}, (void *)({address})) < 0) "
        f"{{ errs |= 1U << {index}; usdtkit_stat(probe, {STAT_READ_ERRORS}); }} "
        f"args[{index}] = {_extend('v', arg.size, arg.signed)}; }}"
    )


def _site_reads(probe: ResolvedProbe, site: Site, needed: FrozenSet[int]) -> Tuple[str, ...]:
    """Statements reading the ``needed`` arguments at ``site`` (others are never touched)."""
    if probe.ref.is_usdt:
        return tuple(read_arg(i, arg, site) for i, arg in enumerate(site.args) if i in needed)
    if probe.ref.kind == "uprobe":
        return tuple(f"args[{i}] = ctx->{reg};" for i, reg in enumerate(_X86_PARAMS) if i in needed)
    return ()


def string_mask(plan: AttachPlan, probe_index: int) -> int:
    """Bit ``slot`` set when string slot ``slot`` applies to this probe: a requested string argument is
    read only where it can be a pointer, so ``strings=["arg1"]`` over probes of different shapes never
    turns a number into text."""
    probe = plan.probes[probe_index]
    return sum(1 << slot for slot, index in enumerate(plan.event_strings) if pointer_like(probe, index))


def needed_args(spec: AttachPlan, probe_index: int) -> FrozenSet[int]:
    """The arguments a probe must read: all of them for events, else only those used by a filter,
    a count key, a histogram or a latency pair key.  An unreadable argument nobody uses is no error,
    and a count-only trace reads nothing per hit."""
    probe = spec.probes[probe_index]
    if spec.events:
        return frozenset(range(probe.arg_count))
    condition = spec.filter_for(probe_index)
    used = set(condition.fields()) if condition is not None else set()
    used.update(spec.count_by or ())
    if spec.hist is not None:
        used.add(spec.hist.field)
    if spec.pair is not None:
        if probe_index == spec.pair.start:
            used.update(spec.pair.start_fields)
        if probe_index == spec.pair.done:
            used.update(spec.pair.done_fields)
    if spec.hist is not None:
        used.update(spec.hist.by_fields)
        used.update(spec.hist.sums)
    return frozenset(f.index for f in used if f.argument is not None and f.index < probe.arg_count)


def record_args(spec: AttachPlan) -> int:
    """Argument slots in every event record and ``args[]`` array: the most any probe has (at least 1)."""
    return max([p.arg_count for p in spec.probes] + [1])


class Generator:
    """Builds the C text and the layout of one program for a plan."""

    def __init__(self, plan: AttachPlan, ringbuf: bool = True, cookies: bool = False,
                 follow_format: Optional[follow.FollowFormat] = None) -> None:
        self.plan = plan
        self.ringbuf = ringbuf
        self.cookies = cookies
        self.follow_format = follow_format if follow_format is not None or not plan.follow else follow.read_format()
        self.nargs = record_args(plan)
        self.attachments: List[Attachment] = []
        self.maps: Dict[str, MapLayout] = {}
        self._lines: List[str] = []
        self.filter_helpers = FilterHelpers()
        self.entry_probes = [i for i, p in enumerate(plan.probes) if p.at_function_entry]
        self.record = self._record_layout() if plan.events else None
        self.count_key = (StructLayout("usdtkit_count_key", key_members(plan.count_by, plan.string_size, COMM_LEN,
                                                                        entry_callers=bool(self.entry_probes)))
                          if plan.count_by else None)
        hist_fields = list(plan.hist.by_fields) if plan.hist is not None else []
        self.hist_key = None
        if plan.hist is not None:
            members = key_members(hist_fields, plan.string_size, COMM_LEN)
            self.hist_key = StructLayout("usdtkit_hist_key", (members[0], Member("slot", "u32"), *members[2:],
                                                               members[1]))
        # What a latency start keeps for its done: the time, and the start probe's values of the
        # histogram key (with a bit per failed read, as in keys).
        start_fields = plan.request.start_fields
        self.start_value = (StructLayout("usdtkit_start", (Member("time", "u64"), *key_members(
            start_fields, plan.string_size, COMM_LEN))) if start_fields else None)

    def _record_layout(self) -> StructLayout:
        members = [Member("ts", "u64"), Member("latency", "u64"), Member("retval", "u64"),
                   Member("pid", "u32"), Member("tid", "u32"), Member("probe", "u32"), Member("cpu", "u32"),
                   Member("errs", "u32"), Member("stack", "s32"), Member("args", "u64", self.nargs, array=True),
                   Member("comm", "char", COMM_LEN)]
        if self.plan.stacks and self.entry_probes:
            members.insert(3, Member(RECORD_CALLER, "u64"))  # with the other u64s: no padding
        members += [Member(f"str{slot}", "char", string_buffer(self.plan.string_size))
                    for slot in range(len(self.plan.event_strings))]
        return StructLayout("usdtkit_event", tuple(members))

    def _map(self, name: str, kind: str, entries: int, key: Optional[StructLayout] = None) -> None:
        self.maps[name] = MapLayout(name, kind, entries, key)

    # ------------------------------------------------------------------ declarations
    def _declarations(self) -> None:
        plan, out = self.plan, self._lines
        nprobes = len(plan.probes)
        out += [
            "/* generated by usdtkit: numbers and usdtkit identifiers only */",
            "#include <uapi/linux/ptrace.h>",
            f"#define USDTKIT_NARGS {self.nargs}",
            f"BPF_PERCPU_ARRAY(stats, u64, {nprobes * STATS_PER_PROBE});",
            "static __always_inline void usdtkit_stat(u32 probe, u32 which) {",
            f"    u32 index = probe * {STATS_PER_PROBE} + which;",
            "    u64 *value = stats.lookup(&index);",
            "    if (value) __sync_fetch_and_add(value, 1);  /* uprobe programs may be preempted */",
            "}",
        ]
        self._map("stats", "percpu_array", nprobes * STATS_PER_PROBE)
        if plan.follow:
            out += follow.declarations(self.follow_format)  # type: ignore[arg-type]
            self._map("followed", "hash", follow.FOLLOWED_ENTRIES)
            self._map("follow_lost", "array", 1)
        elif plan.pid is not None:
            out.append("BPF_ARRAY(config, u32, 1);  /* [0]: the target process */")
            self._map("config", "array", 1)
        if plan.cgroup_id is not None:
            out.append("BPF_ARRAY(cgroup_target, u64, 1);  /* [0]: the id of the target cgroup */")
            self._map("cgroup_target", "array", 1)
        if self.record is not None:
            out.append(self.record.declaration())
            if self.ringbuf:
                out.append(f"BPF_RINGBUF_OUTPUT(events, {plan.ring_pages});")
                self._map("events", "ringbuf", plan.ring_pages)
                # Nonzero while the reader sleeps: only then does a record wake it (see ringbuf.py).
                out.append(f"BPF_ARRAY({WAKE_MAP}, u32, 1);")
                self._map(WAKE_MAP, "array", 1)
            else:  # perf buffer: records are built in a per-CPU scratch slot (too big for the stack)
                out += ["BPF_PERF_OUTPUT(events);",
                        "BPF_PERCPU_ARRAY(event_scratch, struct usdtkit_event, 1);"]
                self._map("events", "perf_output", 0)
        if plan.needs_stacks:
            out.append(f"BPF_STACK_TRACE(stacks, {STACK_MAP_ENTRIES});")
            self._map("stacks", "stack_trace", STACK_MAP_ENTRIES)
        for name, key, entries in (("counts", self.count_key, COUNT_MAP_ENTRIES),
                                   ("hist", self.hist_key, max(nprobes, 1) * 4200)):
            if key is None:
                continue
            out.append(key.declaration())
            out.append(f"BPF_HASH({name}, struct {key.name}, u64, {entries});")
            self._map(name, "hash", entries, key)
            if key.size > _KEY_ON_STACK_MAX:
                out.append(f"BPF_PERCPU_ARRAY({name}_scratch, struct {key.name}, 1);")
        if plan.latency:
            # LRU: starts whose done never comes (a thread killed mid-request, returns the kernel does
            # not probe past 64 nested uretprobes) age out instead of filling the map.  `scope` keeps
            # keys of different processes (or stack frames of one thread) apart.
            words = len(plan.pair.start_fields) if plan.pair is not None else 0
            keys = " ".join(f"u64 {_key_word(i)};" for i in range(max(words, 1)))
            out.append(f"struct usdtkit_start_key {{ {keys} u64 scope; }};")
            value = "u64"
            if self.start_value is not None:
                # Built and read in a per-CPU slot: strings make it too big for the BPF stack.
                out += [self.start_value.declaration(), "BPF_PERCPU_ARRAY(start_scratch, struct usdtkit_start, 1);"]
                value = "struct usdtkit_start"
            out.append(f'BPF_TABLE("lru_hash", struct usdtkit_start_key, {value}, starts, {START_MAP_ENTRIES});')
            self._map("starts", "lru_hash", START_MAP_ENTRIES)

    # ------------------------------------------------------------------ the shared handler
    def _value_of(self, fld: Field) -> str:
        if fld.name == "arg":
            if fld.index >= self.nargs:
                raise UsageError(f"no probe has an argument arg{fld.index}")
            return f"args[{fld.index}]"
        return {**BUILTIN_C, "probe": "probe", "retval": "retval", "latency": "latency"}[fld.name]

    def _field_signed(self, fld: Field) -> bool:
        """Whether a histogram field can be negative: a signed argument of some probe, or a retval."""
        if fld.name == "retval":
            return True
        if fld.name != "arg":
            return False
        return any(arg_signed(p, fld.index) for p in self.plan.probes if fld.index < p.arg_count)

    def _key_start(self, name: str, key: StructLayout) -> List[str]:
        """Statements that make ``key`` point at a zeroed key struct (stack or per-CPU scratch)."""
        if key.size > _KEY_ON_STACK_MAX:
            return [f"    u32 scratch_slot = 0; struct {key.name} *key = {name}_scratch.lookup(&scratch_slot);",
                    "    if (!key) return 0;", "    __builtin_memset(key, 0, sizeof(*key));",
                    "    key->probe = probe;"]
        return [f"    struct {key.name} key_value; struct {key.name} *key = &key_value;",
                "    __builtin_memset(key, 0, sizeof(*key));", "    key->probe = probe;"]

    def _at_entry(self) -> str:
        """The C condition of a hit at a function's first instruction (its return address at the stack
        pointer: see layout.CALLER_MEMBER)."""
        if len(self.entry_probes) == len(self.plan.probes):
            return "1"
        return " || ".join(f"probe == {i}" for i in self.entry_probes)

    def _key_fill(self, fld: Field, bit: int) -> str:
        """The statement that stores ``fld`` into ``key`` (setting error bit ``bit`` when a read fails)."""
        member = f"key->k_{fld.key_name}"
        if fld.name == "comm":
            return f"    bpf_get_current_comm(&{member}, sizeof({member}));"
        if fld.name == "ustack":
            # A stack the kernel could not take (a hash collision in the stack map, no callchain buffer)
            # is a read error: counted, and shown as such rather than as a stack.
            walk = (f"    {member} = (u64)(s64)stacks.get_stackid(ctx, BPF_F_USER_STACK);\n"
                    f"    if ((s64){member} < 0) {{ key->errs |= {1 << bit}U; usdtkit_stat(probe, {STAT_READ_ERRORS}); }}")
            if not self.entry_probes:
                return walk
            # A failed read leaves 0: the stack is kept as walked.
            return (f"{walk}\n    if ({self._at_entry()}) bpf_probe_read_user(&key->{CALLER_MEMBER}, sizeof(u64), "
                    "(void *)ctx->sp);")
        if fld.name == "str":
            self._value_of(Field("arg", fld.index))  # validates the index
            failed = f"{{ {member}[0] = 0; key->errs |= {1 << bit}U; }}"
            # A pointer that could not be read is not read through (its failure is counted once).
            return (f"    if (errs & {1 << fld.index}U) {failed}\n"
                    f"    else if (bpf_probe_read_user_str(&{member}, sizeof({member}), (void *)args[{fld.index}]) < 0) "
                    f"{{ {member}[0] = 0; key->errs |= {1 << bit}U; usdtkit_stat(probe, {STAT_READ_ERRORS}); }}")
        if fld.name == "arg":
            return (f"    {member} = {self._value_of(fld)};\n"
                    f"    if (errs & {1 << fld.index}U) key->errs |= {1 << bit}U;")
        return f"    {member} = {self._value_of(fld)};"

    def _start_order(self) -> List[Field]:
        """The start value's fields in the order of its members (the order of its error bits)."""
        assert self.start_value is not None
        return [m.field for m in self.start_value.members if m.field is not None]

    def _start_copy(self, fld: Field, bit: int) -> str:
        """The statement that copies a start-side value from ``start`` into ``key`` (and its read error)."""
        member = f"k_{fld.key_name}"
        start_bit = self._start_order().index(fld)
        copy = (f"__builtin_memcpy(key->{member}, start->{member}, sizeof(key->{member}));" if fld.is_string
                else f"key->{member} = start->{member};")
        return f"    {copy}\n    if (start->errs & {1 << start_bit}U) key->errs |= {1 << bit}U;"

    def _sum_of(self, fld: Field, slot: int) -> List[str]:
        """Statements adding ``fld`` into the histogram key's ``slot`` (a value whose read failed is left
        out: its read error is counted already)."""
        unread = f"(errs & {1 << fld.index}U)" if fld.name == "arg" else "0"
        return [f"    if (!{unread}) {{", f"    key->slot = {slot}U;",
                "    u64 *total = hist.lookup_or_try_init(key, &zero);",
                f"    if (total) __sync_fetch_and_add(total, {self._value_of(fld)}); "
                f"else usdtkit_stat(probe, {STAT_LOST_KEYS});", "    }"]

    def _handler(self) -> None:
        plan, out = self.plan, self._lines
        out += [
            "static __always_inline int usdtkit_handle(struct pt_regs *ctx, u32 probe, u64 *args, u32 errs,",
            "                                          u64 retval, u64 latency, u32 pid, u32 tid, u32 strmask) {",
            "    usdtkit_stat(probe, 0);",
        ]
        if self.count_key is not None:
            out += ["    {", *self._key_start("counts", self.count_key)]
            for bit, fld in enumerate(plan.count_by or ()):
                out.append(self._key_fill(fld, bit))
            out += ["    u64 zero = 0, *count = counts.lookup_or_try_init(key, &zero);",
                    f"    if (count) __sync_fetch_and_add(count, 1); else usdtkit_stat(probe, {STAT_LOST_KEYS});",
                    "    }"]
        if plan.hist is not None and self.hist_key is not None:
            hist = plan.hist
            value = self._value_of(hist.field)
            # A value whose read failed is counted as a read error, never as a number in a bucket.
            unread = f"(errs & {1 << hist.field.index}U)" if hist.field.name == "arg" else "0"
            out += [f"    if (!{unread}) {{", f"    u64 value = {value};", *self._key_start("hist", self.hist_key)]
            # error bits in the order of the key's members, as readout decodes them
            keyed = [m.field for m in self.hist_key.members if m.field is not None]
            if self.start_value is not None:
                out += ["    u32 start_slot = 0; struct usdtkit_start *start = start_scratch.lookup(&start_slot);",
                        "    if (!start) return 0;"]
            for bit, by in enumerate(keyed):
                out.append(self._start_copy(by, bit) if by.side else self._key_fill(by, bit))
            signed = self._field_signed(hist.field)
            if hist.kind == "log2":
                if signed:
                    out.append(f"    if ((s64)value < 0) key->slot = {LOG2_NEGATIVE}; else")
                out.append("    key->slot = value ? bpf_log2l(value) : 0;")
            elif hist.kind == "fixed":
                kind = "s64" if signed or hist.bounds[0] < 0 else "u64"
                out.append(f"    {kind} v = ({kind})value;")
                for index, bound in enumerate(hist.bounds):
                    keyword = "if" if index == 0 else "else if"
                    out.append(f"    {keyword} (v <= ({kind}){u64_literal(bound)}) key->slot = {index};")
                out.append(f"    else key->slot = {len(hist.bounds)};")
            else:
                buckets = hist.buckets
                kind = "s64" if signed or hist.low < 0 else "u64"
                out += [f"    {kind} v = ({kind})value;",
                        f"    if (v < ({kind}){u64_literal(hist.low)}) key->slot = 0;",
                        f"    else if (v >= ({kind}){u64_literal(hist.high)}) key->slot = {buckets + 1};",
                        f"    else key->slot = 1 + (u32)((u64)(v - ({kind}){u64_literal(hist.low)}) / {u64_literal(hist.step)});"]
            out += ["    u64 zero = 0, *count = hist.lookup_or_try_init(key, &zero);",
                    f"    if (count) __sync_fetch_and_add(count, 1); else usdtkit_stat(probe, {STAT_LOST_KEYS});"]
            if hist.sum:
                out += [f"    key->slot = {SUM_SLOT}U;",
                        "    u64 *sum = hist.lookup_or_try_init(key, &zero);",
                        f"    if (sum) __sync_fetch_and_add(sum, value); else usdtkit_stat(probe, {STAT_LOST_KEYS});"]
            for index, fld in enumerate(hist.sums):
                out += self._sum_of(fld, sum_slot(index))
            out.append("    }")
        if plan.events:
            if self.ringbuf:
                out += ["    struct usdtkit_event *e = events.ringbuf_reserve(sizeof(struct usdtkit_event));",
                        f"    if (!e) {{ usdtkit_stat(probe, {STAT_LOST_EVENTS}); return 0; }}"]
            else:
                out += ["    u32 slot = 0;", "    struct usdtkit_event *e = event_scratch.lookup(&slot);",
                        "    if (!e) return 0;"]
            out += [
                "    e->ts = bpf_ktime_get_ns(); e->pid = pid; e->tid = tid; e->probe = probe;",
                "    e->cpu = bpf_get_smp_processor_id(); e->retval = retval;",
                "    e->latency = latency;",
                "    bpf_get_current_comm(&e->comm, sizeof(e->comm));",
            ]
            for i in range(self.nargs):
                out.append(f"    e->args[{i}] = args[{i}];")
            for slot, index in enumerate(plan.event_strings):
                if index < self.nargs:
                    member = f"e->str{slot}"
                    out.append(f"    {member}[0] = 0;")
                    out.append(f"    if ((strmask & {1 << slot}) && !(errs & {1 << index}U) && "
                               f"bpf_probe_read_user_str(&{member}, sizeof({member}), (void *)args[{index}]) < 0) "
                               f"{{ {member}[0] = 0; errs |= {1 << index}U; usdtkit_stat(probe, {STAT_READ_ERRORS}); }}")
            out.append("    e->errs = errs;")
            if plan.stacks:
                out.append("    e->stack = stacks.get_stackid(ctx, BPF_F_USER_STACK);\n"
                           f"    if (e->stack < 0) usdtkit_stat(probe, {STAT_READ_ERRORS});")
                if self.entry_probes:
                    out.append(f"    e->{RECORD_CALLER} = 0;\n    if ({self._at_entry()}) "
                               f"bpf_probe_read_user(&e->{RECORD_CALLER}, sizeof(u64), (void *)ctx->sp);")
            else:
                out.append("    e->stack = -1;")
            if self.ringbuf:
                # Read after the reserve, so a reader that raised the flag and then found the ring empty
                # saw this record's space taken (the map fd polls readable) or is woken by it.
                out += [f"    u32 wake_slot = 0; u32 *wake = {WAKE_MAP}.lookup(&wake_slot);",
                        "    events.ringbuf_submit(e, wake && *wake ? 0 : BPF_RB_NO_WAKEUP);"]
            else:
                out.append("    if (events.perf_submit(ctx, e, sizeof(*e)) < 0) "
                           f"usdtkit_stat(probe, {STAT_LOST_EVENTS});")
        out += ["    return 0;", "}"]

    # ------------------------------------------------------------------ entry functions
    def _prologue(self) -> List[str]:
        lines = [
            "    u64 id = bpf_get_current_pid_tgid();",
            "    u32 pid = id >> 32, tid = (u32)id;",
        ]
        if self.plan.follow:
            lines.append("    if (!followed.lookup(&pid)) return 0;  /* not the target nor a descendant */")
        elif self.plan.pid is not None:
            # The kernel attaches for the target only; this check also holds where a kernel's own
            # filter is looser (another consumer of the same uprobe, older uprobe_multi pid filters).
            lines += ["    u32 config_slot = 0; u32 *target = config.lookup(&config_slot);",
                      "    if (target && *target && pid != *target) return 0;"]
        if self.plan.cgroup_id is not None:
            lines += ["    u32 cgroup_slot = 0; u64 *cgroup = cgroup_target.lookup(&cgroup_slot);",
                      "    if (!cgroup || bpf_get_current_cgroup_id() != *cgroup) return 0;"]
        lines += ["    u64 args[USDTKIT_NARGS] = {};", "    u32 errs = 0;", "    u64 retval = 0, latency = 0;"]
        return lines

    def _condition(self, p_index: int, probe: ResolvedProbe) -> Tuple[List[str], Optional[str]]:
        """``(statements, C condition)`` of the plan's filter at this probe (no condition: keep all)."""
        condition = self.plan.filter_for(p_index)
        if condition is None:
            return [], None
        to_c = FilterC(probe, self.filter_helpers)
        test = to_c.condition(condition)
        lines = []
        if to_c.reads_comm:
            lines += [f"    u64 comm_words[{COMM_LEN // 8}] = {{}};",
                      "    bpf_get_current_comm(comm_words, sizeof(comm_words));"]
        return lines, test

    def _filters(self, p_index: int, probe: ResolvedProbe) -> List[str]:
        """The statements dropping hits the plan's filter does not keep at this probe."""
        lines, test = self._condition(p_index, probe)
        return lines + [f"    if (!({test})) return 0;"] if test is not None else []

    def _is_start(self, p_index: int, probe: ResolvedProbe) -> bool:
        """Whether the probe starts a latency (a function's entry, a pair's start)."""
        if self.plan.function_latency:
            return not probe.ref.is_return
        return self.plan.pair is not None and p_index == self.plan.pair.start

    def _bodies(self) -> List[Tuple[int, int, _Shape, List[Site]]]:
        """``(probe index, group, shape, sites)`` of each entry function: one per probe and distinct way
        of reading its arguments; the shape is the code after ``u32 probe = N;``."""
        plan = self.plan
        out = []
        for p_index, probe in enumerate(plan.probes):
            groups: Dict[Tuple[str, ...], List[Site]] = {}
            needed = needed_args(plan, p_index)
            for site in probe.sites:
                groups.setdefault(_site_reads(probe, site, needed), []).append(site)
            for g_index, (reads, sites) in enumerate(groups.items()):
                body = self._prologue() + [f"    {r}" for r in reads]
                if probe.ref.is_return:
                    body.append("    retval = PT_REGS_RC(ctx);")
                if self._is_start(p_index, probe):
                    # A start the filter drops is still kept, timeless, so that its done ends it quietly
                    # rather than as a done without a start.
                    lines, test = self._condition(p_index, probe)
                    body += lines + self._latency(p_index, probe, test)
                else:  # a done ends its start whether or not its own filter keeps the pair
                    body += self._latency(p_index, probe) + self._filters(p_index, probe)
                mask = string_mask(plan, p_index)
                body.append(f"    return usdtkit_handle(ctx, probe, args, errs, retval, latency, pid, tid, {mask});")
                out.append((p_index, g_index, (probe.ref.is_return, tuple(body)), sites))
        return out

    def _entries(self) -> None:
        """Entry functions and where each is attached; probes of one shape share one function where
        attach cookies tell them apart."""
        bodies = self._bodies()
        users: Dict[_Shape, Set[int]] = {}
        for p_index, _, shape, _ in bodies:
            users.setdefault(shape, set()).add(p_index)
        shared: Dict[_Shape, str] = {}
        for p_index, g_index, shape, sites in bodies:
            cookie = p_index if self.cookies and len(users[shape]) > 1 else None
            name = shared.get(shape) if cookie is not None else None
            if name is None:
                name = f"usdtkit_p{p_index}_g{g_index}" if cookie is None else f"usdtkit_s{len(shared)}"
                source = str(p_index) if cookie is None else "(u32)bpf_get_attach_cookie(ctx)"
                self._lines += [f"int {name}(struct pt_regs *ctx) {{", f"    u32 probe = {source};", *shape[1], "}"]
                if cookie is not None:
                    shared[shape] = name
            self.attachments += [Attachment(name, site, shape[0], p_index, cookie) for site in sites]

    def _latency(self, p_index: int, probe: ResolvedProbe, kept: Optional[str] = None) -> List[str]:
        """Time a function (uprobe+uretprobe) or a start/done probe pair; entry sides return early (a
        start stores itself as filtered out unless ``kept``, its filter's condition, holds)."""
        plan = self.plan
        if plan.function_latency and probe.ref.kind in ("uprobe", "uretprobe"):
            # Keyed by thread and stack pointer: at entry %rsp points at the return address, after the
            # return it is 8 bytes higher.  Each recursion level has its own key, and a level the
            # kernel does not probe on return (past 64 nested uretprobes) is never mispaired.
            if probe.ref.kind == "uprobe":
                return self._start("    struct usdtkit_start_key sk = {.key = id, .scope = ctx->sp};", kept)
            return self._done("    struct usdtkit_start_key sk = {.key = id, .scope = ctx->sp - 8};")
        pair = plan.pair
        if pair is None or p_index not in (pair.start, pair.done):
            return []
        key_fields = pair.start_fields if p_index == pair.start else pair.done_fields
        # Matched by thread (the id holds the process too), or by fields within one process: two
        # processes can hold the same key (the same address in forked workers, say).
        words = [f".{_key_word(i)} = {self._value_of(f)}" for i, f in enumerate(key_fields)] or [".key = id"]
        lookup = f"    struct usdtkit_start_key sk = {{{', '.join(words)}, .scope = {'pid' if key_fields else '0'}}};"
        # A key whose read failed is no key (a 0 would pair with any other failed read); the read
        # error is counted, and the start shows as unfinished.
        unread = sum(1 << f.index for f in key_fields if f.name == "arg")
        if unread:
            lookup = f"    if (errs & {unread}U) return 0;\n{lookup}"
        return self._start(lookup, kept) if p_index == pair.start else self._done(lookup)

    def _start(self, lookup: str, kept: Optional[str]) -> List[str]:
        """A start: keep its time (and the start-side values of the histogram key) under ``sk``; a time
        of 0 marks a start the filter dropped."""
        if kept is None:
            lines = ["    usdtkit_stat(probe, 0);", lookup, "    u64 now = bpf_ktime_get_ns();"]
        else:
            lines = [f"    u64 kept = ({kept}) != 0;", "    if (kept) usdtkit_stat(probe, 0);", lookup,
                     "    u64 now = kept ? bpf_ktime_get_ns() : 0;"]
        if self.start_value is None:
            lines.append(f"    if (starts.update(&sk, &now) < 0) usdtkit_stat(probe, {STAT_LOST_KEYS});")
        else:  # named `key`, the start value is filled as keys are
            lines += ["    u32 start_slot = 0; struct usdtkit_start *key = start_scratch.lookup(&start_slot);",
                      "    if (!key) return 0;", "    __builtin_memset(key, 0, sizeof(*key));",
                      "    key->time = now; key->probe = probe;"]
            lines += [self._key_fill(fld, bit) for bit, fld in enumerate(self._start_order())]
            lines.append(f"    if (starts.update(&sk, key) < 0) usdtkit_stat(probe, {STAT_LOST_KEYS});")
        return lines + ["    return 0;"]

    def _done(self, lookup: str) -> List[str]:
        """A done: the latency since its start, whose entry is removed; unmatched when there is none."""
        value = "u64" if self.start_value is None else "struct usdtkit_start"
        time = "*started" if self.start_value is None else "started->time"
        lines = [lookup, f"    {value} *started = starts.lookup(&sk);",
                 f"    if (!started) {{ usdtkit_stat(probe, {STAT_UNMATCHED}); return 0; }}",
                 f"    if (!{time}) {{ starts.delete(&sk); return 0; }}  /* its start was filtered out */",
                 f"    usdtkit_stat(probe, {STAT_PAIRED});"]
        if self.start_value is None:
            return lines + ["    latency = bpf_ktime_get_ns() - *started; starts.delete(&sk);"]
        # Copied out before the delete: another CPU may reuse a deleted LRU element at once.
        return lines + ["    u32 start_slot = 0; struct usdtkit_start *start = start_scratch.lookup(&start_slot);",
                        "    if (!start) return 0;", "    __builtin_memcpy(start, started, sizeof(*start));",
                        "    latency = bpf_ktime_get_ns() - start->time; starts.delete(&sk);"]

    def generate(self) -> ProgramLayout:
        self._declarations()
        self._handler()
        before = len(self._lines)
        self._entries()
        # The helpers the filters call are known once the entry functions are written; C wants them first.
        self._lines[before:before] = self.filter_helpers.declarations()
        return ProgramLayout(
            text="\n".join(self._lines) + "\n", maps=dict(self.maps), attachments=tuple(self.attachments),
            ringbuf=self.ringbuf, record=self.record, count_key=self.count_key, hist_key=self.hist_key,
            tracepoints=follow.TRACEPOINTS if self.plan.follow else ())


def generate(plan: AttachPlan, ringbuf: bool = True, cookies: bool = False,
             follow_format: Optional[follow.FollowFormat] = None) -> ProgramLayout:
    """The program for ``plan``: C text, maps, layouts and attachments.

    ``ringbuf=False`` sends events through the per-CPU perf buffer (kernels before 5.8); ``cookies=True``
    lets probes of the same shape share an entry function (kernels from 5.15 pass attach cookies).  A
    plan that follows children reads this kernel's tracepoint records at ``follow_format`` (read from
    tracefs when not given).
    """
    return Generator(plan, ringbuf, cookies, follow_format).generate()
