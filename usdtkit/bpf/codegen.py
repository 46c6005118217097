"""Generate the BPF C for a :class:`TraceSpec`, from validated values only.

Layout of a generated program:

* one *entry function* per probe and distinct way of reading its arguments (call sites whose argument
  specs and relocation agree share one function; libbpf shares specs the same way), named
  ``usdtkit_pN_gM``; it reads the arguments into ``u64 args[]`` (sign-extended where the spec says
  signed), applies the filters and calls
* ``usdtkit_handle``, inlined, which counts the hit, then feeds the collectors: a count map keyed by the
  chosen fields, a log2 or linear histogram, the event ring buffer.
* ``stats``, a per-CPU array of five counters per probe: hits, events lost (ring buffer full), keys lost
  (map full), argument reads that failed, and done/return hits without a matching start (latency).
  Nothing is dropped without being counted.

What reaches the C text: integers formatted by this module, field names from a closed set, and
identifiers built here.  Probe names, paths and filter text never do.

x86_64 argument locations map to ``struct pt_regs`` fields; ``sym(%rip)`` arguments are relocated at
run time from the probe's own address: a uprobe handler sees ``ctx->ip`` equal to the call site's
runtime address, so ``symbol + off`` is ``ctx->ip + (symbol + off - site_pc)`` in any process, PIE or
shared library, without knowing the load bias.
"""
from __future__ import annotations

import platform
from typing import Dict, FrozenSet, List, Optional, Tuple

from ..elf.model import Arg, Constant, Memory, Register, RegisterValue, SymbolRelative, Unsupported
from ..errors import UsageError
from ..tracing.resolve import ResolvedProbe, Site
from ..tracing.spec import COMM_LEN, STRING_KEY_SIZE, Field, Predicate, TraceSpec

STATS_PER_PROBE = 5
STAT_HITS, STAT_LOST_EVENTS, STAT_LOST_KEYS, STAT_READ_ERRORS, STAT_UNMATCHED = range(5)
LOG2_NEGATIVE_SLOT = 65  # signed values below zero, in log2 histograms
COUNT_MAP_ENTRIES = 65536

_X86_REGS = {
    "rax": "ax", "rbx": "bx", "rcx": "cx", "rdx": "dx", "rsi": "si", "rdi": "di", "rbp": "bp",
    "rsp": "sp", "rip": "ip", **{f"r{i}": f"r{i}" for i in range(8, 16)},
}
_X86_PARAMS = ("di", "si", "dx", "cx", "r8", "r9")


class UnreadableArgument(UsageError):
    """An argument location this backend cannot read; refused before attaching."""


def _u64(value: int) -> str:
    """A C literal for ``value`` as a 64-bit two's complement number."""
    return f"0x{value & 0xFFFFFFFFFFFFFFFF:x}ULL"


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
    if arg.arch not in ("x86_64",) or platform.machine() != "x86_64":
        raise UnreadableArgument(f"argument {index} ({arg.raw}): {arg.arch} specs are not readable here")
    if arg.size not in (1, 2, 4, 8):
        raise UnreadableArgument(f"argument {index} ({arg.raw}): size {arg.size} is not 1, 2, 4 or 8")
    if isinstance(loc, Unsupported):
        raise UnreadableArgument(f"argument {index} ({arg.raw}): {loc.reason}")
    if isinstance(loc, Constant):
        return f"args[{index}] = {_extend(_u64(loc.value), arg.size, arg.signed)};"
    if isinstance(loc, RegisterValue):
        reg = loc.register
        value = _reg(reg)
        if reg.shift:
            value = f"({value} >> {int(reg.shift)})"
        width = min(arg.size * 8, reg.bits)
        value = f"(u64)(u{width})({value})" if width < 64 else value
        return f"args[{index}] = {_extend(value, arg.size, arg.signed)};"
    if isinstance(loc, Memory):
        address = f"{_reg(loc.base)} + {_u64(loc.offset)}" if loc.base is not None else _u64(loc.offset)
        if loc.index is not None:
            if loc.scale not in (1, 2, 4, 8):
                raise UnreadableArgument(f"argument {index} ({arg.raw}): scale {loc.scale}")
            address += f" + {_reg(loc.index)} * {int(loc.scale)}"
    elif isinstance(loc, SymbolRelative):
        if loc.address is None:
            raise UnreadableArgument(f"argument {index} ({arg.raw}): symbol {loc.symbol} not found in the "
                                     "symbol tables")
        address = f"ctx->ip + {_u64(loc.address - site.pc)}"
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


def pointer_like(probe: ResolvedProbe, index: int) -> bool:
    """Whether argument ``index`` can hold a pointer at every site (unsigned 8 bytes; any uprobe arg)."""
    if probe.ref.kind == "uprobe":
        return index < len(_X86_PARAMS)
    if not probe.ref.is_usdt or index >= probe.arg_count:
        return False
    return all(index < len(s.args) and s.args[index].size == 8 and not s.args[index].signed
               for s in probe.sites)


def string_mask(spec: TraceSpec, probe_index: int) -> int:
    """Bit ``slot`` set when string slot ``slot`` applies to this probe: a requested string argument is
    read only where it can be a pointer, so ``strings=["arg1"]`` over probes of different shapes never
    turns a number into text."""
    probe = spec.probes[probe_index]
    return sum(1 << slot for slot, index in enumerate(spec.event_strings) if pointer_like(probe, index))


def needed_args(spec: TraceSpec, probe_index: int) -> FrozenSet[int]:
    """The arguments a probe must read: all of them for events, else only those used by a filter,
    a count key, a histogram or a latency pair key.  An unreadable argument nobody uses is no error,
    and a count-only trace reads nothing per hit."""
    probe = spec.probes[probe_index]
    if spec.events:
        return frozenset(range(probe.arg_count))
    used = {p.field for p in spec.filters}
    used.update(spec.count_by or ())
    if spec.hist is not None:
        used.add(spec.hist.field)
    if spec.pair is not None:
        if probe_index == spec.pair.start and spec.pair.start_key is not None:
            used.add(spec.pair.start_key)
        if probe_index == spec.pair.done and spec.pair.done_key is not None:
            used.add(spec.pair.done_key)
    if spec.hist is not None and spec.hist.by is not None:
        used.add(spec.hist.by)
    return frozenset(f.index for f in used if f.argument is not None and f.index < probe.arg_count)


def _arg_signed(probe: ResolvedProbe, index: int) -> Optional[bool]:
    signs = {site.args[index].signed for site in probe.sites if index < len(site.args)}
    return signs.pop() if len(signs) == 1 else None


def _predicate(pred: Predicate, probe: ResolvedProbe) -> str:
    """A parenthesised C condition, true when the event must be dropped (``if COND return 0;``)."""
    name = pred.field.name
    negate = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}[pred.op]
    if name == "comm":
        value = bytes(pred.value) + b"\0"
        equal = " && ".join(f"comm[{i}] == {b}" for i, b in enumerate(value))
        return f"(!({equal}))" if pred.op == "==" else f"({equal})"
    if name == "arg":
        if pred.field.index >= probe.arg_count:
            raise UsageError(f"filter on arg{pred.field.index}: {probe.label} has {probe.arg_count} arguments")
        lhs, signed = f"args[{pred.field.index}]", _arg_signed(probe, pred.field.index)
    elif name == "retval":
        if not probe.ref.is_return:
            raise UsageError(f"filter on retval: {probe.label} is not a uretprobe")
        lhs, signed = "retval", None
    else:
        lhs, signed = {"pid": "pid", "tid": "tid", "cpu": "bpf_get_smp_processor_id()"}[name], False
    number = int(pred.value)
    if signed or (signed is None and number < 0):
        return f"((s64){lhs} {negate} (s64){_u64(number)})"
    return f"((u64){lhs} {negate} {_u64(number)})"


def record_args(spec: TraceSpec) -> int:
    """Argument slots in every event record and ``args[]`` array: the most any probe has (at least 1)."""
    return max([p.arg_count for p in spec.probes] + [1])


class Generator:
    """Builds the C text and the list of (function, site, retprobe) attachments for a spec."""

    def __init__(self, spec: TraceSpec, ringbuf: bool = True) -> None:
        self.spec = spec
        self.ringbuf = ringbuf
        self.nargs = record_args(spec)
        self.attachments: List[Tuple[str, Site, bool]] = []
        self._lines: List[str] = []

    # ------------------------------------------------------------------ declarations
    def _declarations(self) -> None:
        spec, out = self.spec, self._lines
        nprobes = len(spec.probes)
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
        if spec.events:
            nstr = len(spec.event_strings)
            out += [
                "struct usdtkit_event {",
                "    u64 ts; u32 pid; u32 tid; u32 probe; u32 cpu; u32 errs; s32 stack;",
                "    u64 latency; u64 retval;",
                f"    u64 args[USDTKIT_NARGS]; char comm[{COMM_LEN}];",
                f"    char str[{nstr}][{spec.string_size}];" if nstr else "",
                "};",
            ]
            if self.ringbuf:
                out.append(f"BPF_RINGBUF_OUTPUT(events, {spec.ring_pages});")
            else:  # perf buffer: records are built in a per-CPU scratch slot (too big for the stack)
                out += ["BPF_PERF_OUTPUT(events);",
                        "BPF_PERCPU_ARRAY(event_scratch, struct usdtkit_event, 1);"]
        if spec.needs_stacks:
            out.append("BPF_STACK_TRACE(stacks, 16384);")
        if spec.count_by:  # counts by probe alone come from the hits in `stats`: no hash map per hit
            out.append("struct usdtkit_count_key {")
            out.append("    u32 probe;")
            for fld in spec.count_by:
                out.append(f"    {self._key_member(fld)}")
            out.append("};")
            out.append(f"BPF_HASH(counts, struct usdtkit_count_key, u64, {COUNT_MAP_ENTRIES});")
        if spec.hist is not None:
            by = f" {self._key_member(spec.hist.by)}" if spec.hist.by is not None else ""
            out.append(f"struct usdtkit_hist_key {{ u32 probe; u32 slot;{by} }};")
            out.append(f"BPF_HASH(hist, struct usdtkit_hist_key, u64, {max(nprobes, 1) * 4200});")
        if spec.function_latency or spec.pair is not None:
            # LRU: starts whose done never comes (a thread killed mid-request, returns the kernel does
            # not probe past 64 nested uretprobes) age out instead of filling the map.
            out.append("struct usdtkit_start_key { u64 key; u64 frame; };")
            out.append('BPF_TABLE("lru_hash", struct usdtkit_start_key, u64, starts, 65536);')

    @staticmethod
    def _key_member(fld: Field) -> str:
        """The declaration of ``fld`` as a member of a map key struct."""
        if fld.name == "comm":
            return f"char k_comm[{COMM_LEN}];"
        if fld.name == "str":
            return f"char k_{fld.key_name}[{STRING_KEY_SIZE}];"
        return f"u64 k_{fld.key_name};"

    def _key_fill(self, fld: Field) -> str:
        """The statement that stores ``fld`` into ``key``."""
        member = f"key.k_{fld.key_name}"
        if fld.name == "comm":
            return f"    bpf_get_current_comm(&{member}, sizeof({member}));"
        if fld.name == "ustack":
            return f"    {member} = (u64)(s64)stacks.get_stackid(ctx, BPF_F_USER_STACK);"
        if fld.name == "str":
            self._value_of(Field("arg", fld.index))  # validates the index
            return (f"    if (bpf_probe_read_user_str(&{member}, sizeof({member}), (void *)args[{fld.index}]) < 0) "
                    f"{member}[0] = 0;")
        return f"    {member} = {self._value_of(fld)};"

    # ------------------------------------------------------------------ the shared handler
    def _value_of(self, fld: Field) -> str:
        if fld.name == "arg":
            if fld.index >= self.nargs:
                raise UsageError(f"no probe has an argument arg{fld.index}")
            return f"args[{fld.index}]"
        return {"pid": "pid", "tid": "tid", "cpu": "bpf_get_smp_processor_id()", "probe": "probe",
                "retval": "retval", "latency": "latency"}[fld.name]

    def _field_signed(self, fld: Field) -> bool:
        """Whether a histogram field can be negative: a signed argument of some probe, or a retval."""
        if fld.name == "retval":
            return True
        if fld.name != "arg":
            return False
        return any(_arg_signed(p, fld.index) for p in self.spec.probes if fld.index < p.arg_count)

    def _handler(self) -> None:
        spec, out = self.spec, self._lines
        out += [
            "static __always_inline int usdtkit_handle(struct pt_regs *ctx, u32 probe, u64 *args, u32 errs,",
            "                                          u64 retval, u64 latency, u32 pid, u32 tid, u32 strmask) {",
            "    usdtkit_stat(probe, 0);",
        ]
        if spec.count_by:
            out += ["    {", "    struct usdtkit_count_key key;", "    __builtin_memset(&key, 0, sizeof(key));",
                    "    key.probe = probe;"]
            for fld in spec.count_by:
                out.append(self._key_fill(fld))
            out += ["    u64 zero = 0, *count = counts.lookup_or_try_init(&key, &zero);",
                    f"    if (count) __sync_fetch_and_add(count, 1); else usdtkit_stat(probe, {STAT_LOST_KEYS});",
                    "    }"]
        if spec.hist is not None:
            hist = spec.hist
            value = self._value_of(hist.field)
            out += ["    {", f"    u64 value = {value};", "    struct usdtkit_hist_key key;",
                    "    __builtin_memset(&key, 0, sizeof(key));", "    key.probe = probe;"]
            if hist.by is not None:
                out.append(self._key_fill(hist.by))
            signed = self._field_signed(hist.field)
            if hist.kind == "log2":
                # slot 0: the value 0; slot k: [2^(k-1), 2^k); slot 65: negative (signed fields only)
                if signed:
                    out.append(f"    if ((s64)value < 0) key.slot = {LOG2_NEGATIVE_SLOT}; else")
                out.append("    key.slot = value ? bpf_log2l(value) : 0;")
            else:
                buckets = hist.buckets
                kind = "s64" if signed or hist.low < 0 else "u64"
                out += [f"    {kind} v = ({kind})value;",
                        f"    if (v < ({kind}){_u64(hist.low)}) key.slot = 0;",
                        f"    else if (v >= ({kind}){_u64(hist.high)}) key.slot = {buckets + 1};",
                        f"    else key.slot = 1 + (u32)((u64)(v - ({kind}){_u64(hist.low)}) / {_u64(hist.step)});"]
            out += ["    u64 zero = 0, *count = hist.lookup_or_try_init(&key, &zero);",
                    f"    if (count) __sync_fetch_and_add(count, 1); else usdtkit_stat(probe, {STAT_LOST_KEYS});",
                    "    }"]
        if spec.events:
            if self.ringbuf:
                out += ["    struct usdtkit_event *e = events.ringbuf_reserve(sizeof(struct usdtkit_event));",
                        f"    if (!e) {{ usdtkit_stat(probe, {STAT_LOST_EVENTS}); return 0; }}"]
            else:
                out += ["    u32 slot = 0;", "    struct usdtkit_event *e = event_scratch.lookup(&slot);",
                        "    if (!e) return 0;"]
            out += [
                "    e->ts = bpf_ktime_get_ns(); e->pid = pid; e->tid = tid; e->probe = probe;",
                "    e->cpu = bpf_get_smp_processor_id(); e->errs = errs; e->retval = retval;",
                "    e->latency = latency;",
                "    bpf_get_current_comm(&e->comm, sizeof(e->comm));",
            ]
            for i in range(self.nargs):
                out.append(f"    e->args[{i}] = args[{i}];")
            for slot, index in enumerate(spec.event_strings):
                if index < self.nargs:
                    out.append(f"    e->str[{slot}][0] = 0;")
                    out.append(f"    if ((strmask & {1 << slot}) && bpf_probe_read_user_str(&e->str[{slot}], "
                               f"sizeof(e->str[{slot}]), (void *)args[{index}]) < 0) e->str[{slot}][0] = 0;")
            if spec.stacks:
                out.append("    e->stack = stacks.get_stackid(ctx, BPF_F_USER_STACK);")
            else:
                out.append("    e->stack = -1;")
            if self.ringbuf:
                out.append("    events.ringbuf_submit(e, 0);")
            else:
                out.append("    if (events.perf_submit(ctx, e, sizeof(*e)) < 0) "
                           f"usdtkit_stat(probe, {STAT_LOST_EVENTS});")
        out += ["    return 0;", "}"]

    # ------------------------------------------------------------------ entry functions
    def _prologue(self, probe_index: int, probe: ResolvedProbe) -> List[str]:
        lines = [
            f"    u32 probe = {probe_index};",
            "    u64 id = bpf_get_current_pid_tgid();",
            "    u32 pid = id >> 32, tid = (u32)id;",
        ]
        if self.spec.pid is not None:
            lines.append(f"    if (pid != {int(self.spec.pid)}) return 0;")
        lines += ["    u64 args[USDTKIT_NARGS] = {};", "    u32 errs = 0;", "    u64 retval = 0, latency = 0;"]
        return lines

    def _filters(self, probe: ResolvedProbe) -> List[str]:
        """Drop conditions for one probe.  In a function latency trace, argument filters act on entry
        and retval filters on return (each side has only its own values)."""
        preds = list(self.spec.filters)
        if self.spec.function_latency:
            if probe.ref.is_return:
                preds = [p for p in preds if p.field.name != "arg"]
            else:
                preds = [p for p in preds if p.field.name != "retval"]
        lines = []
        if any(p.field.name == "comm" for p in preds):
            lines += [f"    char comm[{COMM_LEN}] = {{}};", "    bpf_get_current_comm(&comm, sizeof(comm));"]
        for pred in preds:
            lines.append(f"    if {_predicate(pred, probe)} return 0;")
        return lines

    def _entries(self) -> None:
        spec, out = self.spec, self._lines
        for p_index, probe in enumerate(spec.probes):
            groups: Dict[Tuple[str, ...], List[Site]] = {}
            for site in probe.sites:
                groups.setdefault(_site_reads(probe, site, needed_args(spec, p_index)), []).append(site)
            for g_index, (reads, sites) in enumerate(groups.items()):
                name = f"usdtkit_p{p_index}_g{g_index}"
                body = self._prologue(p_index, probe) + [f"    {r}" for r in reads]
                if probe.ref.is_return:
                    body.append("    retval = PT_REGS_RC(ctx);")
                body += self._filters(probe)
                body += self._latency(p_index, probe)
                mask = string_mask(spec, p_index)
                body.append(f"    return usdtkit_handle(ctx, probe, args, errs, retval, latency, pid, tid, {mask});")
                out += [f"int {name}(struct pt_regs *ctx) {{", *body, "}"]
                for site in sites:
                    self.attachments.append((name, site, probe.ref.is_return))

    def _latency(self, p_index: int, probe: ResolvedProbe) -> List[str]:
        """Time a function (uprobe+uretprobe) or a start/done probe pair; entry sides return early."""
        spec = self.spec
        if spec.function_latency and probe.ref.kind in ("uprobe", "uretprobe"):
            # Keyed by thread and stack pointer: at entry %rsp points at the return address, after the
            # return it is 8 bytes higher.  Each recursion level has its own key, and a level the
            # kernel does not probe on return (past 64 nested uretprobes) is never mispaired.
            if probe.ref.kind == "uprobe":
                return ["    usdtkit_stat(probe, 0);",
                        "    struct usdtkit_start_key sk = {.key = id, .frame = ctx->sp};",
                        "    u64 now = bpf_ktime_get_ns();",
                        f"    if (starts.update(&sk, &now) < 0) usdtkit_stat(probe, {STAT_LOST_KEYS});",
                        "    return 0;"]
            return ["    struct usdtkit_start_key sk = {.key = id, .frame = ctx->sp - 8};",
                    "    u64 *started = starts.lookup(&sk);",
                    f"    if (!started) {{ usdtkit_stat(probe, {STAT_UNMATCHED}); return 0; }}",
                    "    latency = bpf_ktime_get_ns() - *started; starts.delete(&sk);"]
        pair = spec.pair
        if pair is None or p_index not in (pair.start, pair.done):
            return []
        key_field = pair.start_key if p_index == pair.start else pair.done_key
        key = self._value_of(key_field) if key_field is not None else "id"
        if p_index == pair.start:
            return ["    usdtkit_stat(probe, 0);",
                    f"    struct usdtkit_start_key sk = {{.key = {key}, .frame = 0}};",
                    "    u64 now = bpf_ktime_get_ns();",
                    f"    if (starts.update(&sk, &now) < 0) usdtkit_stat(probe, {STAT_LOST_KEYS});",
                    "    return 0;"]
        return [f"    struct usdtkit_start_key sk = {{.key = {key}, .frame = 0}};",
                "    u64 *started = starts.lookup(&sk);",
                f"    if (!started) {{ usdtkit_stat(probe, {STAT_UNMATCHED}); return 0; }}",
                "    latency = bpf_ktime_get_ns() - *started; starts.delete(&sk);"]

    def generate(self) -> str:
        self._declarations()
        self._handler()
        self._entries()
        return "\n".join(self._lines) + "\n"


def generate(spec: TraceSpec, ringbuf: bool = True) -> Tuple[str, List[Tuple[str, Site, bool]]]:
    """Return the C text and the attachments ``(function, site, retprobe)`` for ``spec``.

    ``ringbuf=False`` sends events through the per-CPU perf buffer (kernels before 5.8).
    """
    gen = Generator(spec, ringbuf)
    return gen.generate(), gen.attachments
