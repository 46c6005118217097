"""Read a program's maps into results: per-probe stats, counts, histograms, named stacks.

Keys are decoded with the layouts the code generator made (:mod:`usdtkit.bpf.layout`); this module turns
their members back into Python values (strings decoded and marked when cut, signed arguments signed,
failed reads as ``None``, stack ids into folded frames) through the backend interface, so it reads a
bcc program and an in-memory fake alike.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from ..bpf.backend import LoadedProgram
from ..bpf.layout import CALLER_MEMBER, PROBE_STATS, STAT_PAIRED, STATS_PER_PROBE, ProgramLayout, StructLayout
from ..expr.fields import Field
from ..plan.buckets import SUM_SLOT, sum_slot
from ..plan import site_cost
from ..plan.plan import AttachPlan
from .results import Counts, Histogram, ProbeStats
from .symbolize import Symbolizer
from .text import c_string, decode_text, signed64


def probe_signs(plan: AttachPlan, index: int) -> List[bool]:
    """Per argument of probe ``index``: whether every site declares it signed."""
    probe = plan.probes[index]
    out = []
    for i in range(probe.arg_count):
        args = [s.args[i] for s in probe.sites if i < len(s.args)]
        out.append(bool(args) and all(a.signed for a in args))
    return out


class MapReader:
    """Reads one program's maps; knows the plan's probes, their labels and argument signedness."""

    def __init__(self, plan: AttachPlan, layout: ProgramLayout, labels: Sequence[str], symbolizer: Symbolizer) -> None:
        self.plan = plan
        self.layout = layout
        self.labels = list(labels)
        self._symbolizer = symbolizer
        self._adds_caller: Dict[int, bool] = {}
        self.signs = [probe_signs(plan, i) for i in range(len(plan.probes))]
        hist = plan.hist
        # a sum of signed values wraps like the values: read it back as a signed number
        self._signed_value = hist is not None and self._signed(hist.field)
        self._sum_slots = {sum_slot(i): (str(f), self._signed(f)) for i, f in enumerate(hist.sums)} if hist else {}

    def _signed(self, fld: Field) -> bool:
        """Whether values of ``fld`` can be negative: a retval, or an argument some probe declares signed."""
        return fld.name == "retval" or (
            fld.name == "arg" and any(s[fld.index] for s in self.signs if fld.index < len(s)))

    def per_probe(self, program: LoadedProgram) -> List[ProbeStats]:
        """Stats of each probe by index (labels may repeat)."""
        totals = [0] * (len(self.plan.probes) * STATS_PER_PROBE)
        for key, value in program.read_map("stats"):
            index = int.from_bytes(key[:4], "little")
            if index < len(totals):
                totals[index] = value
        first = [i * STATS_PER_PROBE for i in range(len(self.plan.probes))]
        stats = [ProbeStats(*totals[at:at + PROBE_STATS]) for at in first]
        return self._with_unfinished(stats, [totals[at + STAT_PAIRED] for at in first])

    def _with_unfinished(self, stats: List[ProbeStats], paired: List[int]) -> List[ProbeStats]:
        """Latency: starts kept at the entry/start side that no done/return side found (a done its own
        filter drops still ends its start)."""
        plan = self.plan
        pairs: List[Tuple[int, int]] = []
        if plan.pair is not None:
            pairs.append((plan.pair.start, plan.pair.done))
        elif plan.function_latency:
            entries = [i for i, p in enumerate(plan.probes) if not p.ref.is_return]
            returns = [i for i, p in enumerate(plan.probes) if p.ref.is_return]
            pairs.extend(zip(entries, returns))
        out = list(stats)
        for start, done in pairs:
            missing = max(0, stats[start].hits - paired[done])
            fields = stats[done].to_json()
            fields["unfinished"] = missing
            out[done] = ProbeStats(**fields)
        return out

    def stats(self, program: LoadedProgram) -> Dict[str, ProbeStats]:
        out: Dict[str, ProbeStats] = {}
        for label, stats in zip(self.labels, self.per_probe(program)):
            previous = out.get(label)
            if previous is not None:  # two probes with one label: add them up
                stats = ProbeStats(*(a + b for a, b in zip(previous.to_json().values(), stats.to_json().values())))
            out[label] = stats
        return out

    def counts(self, program: LoadedProgram) -> Optional[Counts]:
        plan = self.plan
        if plan.count_by is None:
            return None
        fields = tuple(str(f) for f in plan.count_by)
        items: Dict[Tuple, int] = {}
        if not plan.count_by:  # counts by probe only: the in-kernel hit counters
            for label, stats in self.stats(program).items():
                if stats.hits:
                    items[(label,)] = stats.hits
            return Counts(fields, items)
        key_layout = self.layout.count_key
        assert key_layout is not None
        for raw, value in program.read_map("counts"):
            row = tuple(self._key_row(program, key_layout, raw))
            items[row] = items.get(row, 0) + value
        return Counts(fields, items)

    def count_row(self, program: LoadedProgram, raw: bytes) -> List[object]:
        """The ``Counts`` key of one raw count-map key."""
        assert self.layout.count_key is not None
        return self._key_row(program, self.layout.count_key, raw)

    def _key_row(self, program: LoadedProgram, layout: StructLayout, raw: bytes) -> List[object]:
        """The probe label, then each key field's value (in the order the fields were asked for)."""
        members = layout.unpack(raw)
        probe = int(members["probe"])  # type: ignore[call-overload]
        errs = int(members["errs"])  # type: ignore[call-overload]
        keyed = [m for m in layout.members if m.field is not None]
        order = {m.field: m for m in keyed}
        asked = list(self.plan.count_by or ()) if layout is self.layout.count_key else \
            [m.field for m in keyed]
        row: List[object] = [self.labels[probe] if probe < len(self.labels) else f"#{probe}"]
        for bit, fld in enumerate(asked):
            member = order[fld]
            if errs & (1 << bit):
                row.append(None)
                continue
            value = members[member.name]
            row.append(self._value(program, fld, value, probe, members))
        return row

    def _value(self, program: LoadedProgram, fld: object, value: object, probe: int,
               members: Dict[str, object]) -> object:
        name = getattr(fld, "name")
        if name == "comm":
            return c_string(bytes(value))  # type: ignore[arg-type]
        if name == "str":
            return decode_text(bytes(value), self.plan.string_size)[0]  # type: ignore[arg-type]
        if name == "ustack":
            pid = self.plan.pid if self.plan.pid is not None else int(members.get("k_pid", -1))  # type: ignore[arg-type]
            caller = int(members.get(CALLER_MEMBER, 0))  # type: ignore[call-overload]
            return self._folded(program, signed64(int(value)), pid, caller, probe)  # type: ignore[call-overload]
        if getattr(fld, "side"):  # read at the start probe: its own argument types
            probe = self.plan.start_indexes()[0]
        signs = self.signs[probe] if probe < len(self.signs) else []
        index = getattr(fld, "index")
        if name == "arg" and index < len(signs) and signs[index]:
            return signed64(int(value))  # type: ignore[call-overload]
        return int(value)  # type: ignore[call-overload]

    def frames(self, program: LoadedProgram, stack_id: int, pid: int, detail: bool = True, probe: int = -1,
               caller: int = 0) -> Tuple[str, ...]:
        """The stack's frames named, innermost first (``caller``: see :meth:`_addresses`)."""
        return tuple(self._symbolizer.symbolize(pid, address, detail)
                     for address in self._addresses(program, stack_id, probe, caller))

    def _addresses(self, program: LoadedProgram, stack_id: int, probe: int, caller: int) -> List[int]:
        """The stack's addresses, innermost first; ``caller`` (a return address taken at a function's first
        instruction) goes back in as the second frame, unless the kernel's walk put it there already."""
        addresses = program.stack(stack_id)
        if caller and addresses and not (self._kernel_may_add_caller(probe) and addresses[1:2] == [caller]):
            addresses = [addresses[0], caller, *addresses[1:]]
        return addresses

    def observe_stack_owners(self, program: LoadedProgram) -> None:
        """Snapshot the mappings of traced processes while they live, to name their stacks later."""
        plan = self.plan
        if not plan.needs_stacks:
            return
        if plan.pid is not None:
            self._symbolizer.observe(plan.pid)
        elif plan.count_by and any(f.name == "ustack" for f in plan.count_by) and self.layout.count_key:
            for raw, _ in program.read_map("counts"):
                pid = int(self.layout.count_key.unpack(raw).get("k_pid", 0))  # type: ignore[call-overload]
                if pid and not self._symbolizer.knows(pid):
                    self._symbolizer.observe(pid)

    def _folded(self, program: LoadedProgram, stack_id: int, pid: int, caller: int = 0, probe: int = -1) -> str:
        """Root-first frames joined by ``;``: the folded format flame graph tools read."""
        if stack_id < 0:
            return "[no stack]"
        return ";".join(reversed(self.frames(program, stack_id, pid, False, probe, caller))) or "[empty stack]"

    def _kernel_may_add_caller(self, probe: int) -> bool:
        """Whether the probe's first instruction is one at which the kernel adds the caller itself
        (newer kernels do; on older ones the stack's second frame then differs from the caller)."""
        known = self._adds_caller.get(probe)
        if known is None:
            sites = self.plan.probes[probe].sites if 0 <= probe < len(self.plan.probes) else ()
            known = self._adds_caller[probe] = any(
                site_cost.kernel_adds_caller(site_cost.read_site(site.attach_path, site.file_offset, 4))
                for site in sites)
        return known

    def _hist_label(self, row: List[object]) -> Tuple[object, ...]:
        """``(probe, value)``, or ``(probe, value1, value2, ...)`` in the order the fields were given."""
        hist = self.plan.hist
        assert hist is not None and self.layout.hist_key is not None
        order = [m.field for m in self.layout.hist_key.members if m.field is not None]
        values = dict(zip(order, row[1:]))
        return (row[0], *(values[f] for f in hist.by_fields))

    def histograms(self, program: LoadedProgram) -> Optional[Dict[object, Histogram]]:
        hist = self.plan.hist
        layout = self.layout.hist_key
        if hist is None or layout is None:
            return None
        unit = "ns" if hist.field.name == "latency" else ""
        out: Dict[object, Histogram] = {}
        for raw, value in program.read_map("hist"):
            members = layout.unpack(raw)
            row = self._key_row(program, layout, raw)
            label: object = row[0] if hist.by is None else self._hist_label(row)
            h = out.setdefault(label, Histogram(hist.kind, {}, hist.low, hist.high, hist.step, unit, hist.bounds,
                                                0 if hist.sum else None))
            slot = int(members["slot"])  # type: ignore[call-overload]
            if slot == SUM_SLOT:
                h.sum = (h.sum or 0) + (signed64(value) if self._signed_value else value)
            elif slot in self._sum_slots:
                name, signed = self._sum_slots[slot]
                h.sums[name] = h.sums.get(name, 0) + (signed64(value) if signed else value)
            else:
                h.buckets[slot] = h.buckets.get(slot, 0) + value
        return out
