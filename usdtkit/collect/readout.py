"""Read a trace's kernel maps into results: per-probe stats, counts, histograms, named stacks.

The maps' keys are the C structs :mod:`usdtkit.bpf.codegen` declares; this module turns their
members back into Python values (strings decoded, signed arguments signed, stack ids into folded
frames) and names every probe once (:func:`probe_labels`).
"""
from __future__ import annotations

import ctypes
import os
from typing import Dict, List, Optional, Tuple

from ..bpf import codegen
from ..bpf.backend import Program
from ..collect.records import signed64
from ..collect.results import Counts, Histogram, ProbeStats
from ..collect.symbolize import Symbolizer
from .spec import Field, TraceSpec


def probe_labels(spec: TraceSpec) -> List[str]:
    """One distinct name per probe for results.  In a function latency trace the return side, where
    times are taken, is named after the function and the entry side ``func:entry``; probes that would
    share a name get their binary's name appended."""
    labels = [p.label for p in spec.probes]
    if spec.function_latency:
        for i, probe in enumerate(spec.probes):
            labels[i] = probe.ref.name if probe.ref.is_return else f"{probe.ref.name}:entry"
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            labels = [f"{lab} [{os.path.basename(spec.probes[j].binary)}]" if lab == label else lab
                      for j, lab in enumerate(labels)]
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            labels[i] = f"{label} #{i}"
    return labels


class MapReader:
    """Reads one session's maps; knows the spec's probes, their labels and argument signedness."""

    def __init__(self, spec: TraceSpec, labels: List[str], symbolizer: Symbolizer) -> None:
        self.spec = spec
        self.labels = labels
        self._symbolizer = symbolizer
        self.signs = [self._probe_signs(i) for i in range(len(spec.probes))]

    def _probe_signs(self, index: int) -> List[Tuple[bool, int]]:
        probe = self.spec.probes[index]
        out = []
        for i in range(probe.arg_count):
            args = [s.args[i] for s in probe.sites if i < len(s.args)]
            out.append((bool(args) and all(a.signed for a in args), args[0].size if args else 8))
        return out

    def stats(self, program: Program) -> Dict[str, ProbeStats]:
        table = program.table("stats")
        totals = [0] * (len(self.spec.probes) * codegen.STATS_PER_PROBE)
        for key, per_cpu in table.items():
            totals[key.value] = sum(per_cpu)
        out: Dict[str, ProbeStats] = {}
        for i, probe in enumerate(self.spec.probes):
            base = i * codegen.STATS_PER_PROBE
            stats = ProbeStats(*totals[base:base + codegen.STATS_PER_PROBE])
            previous = out.get(self.labels[i])
            if previous is not None:  # two probes with one label (uprobe+uretprobe): add them up
                stats = ProbeStats(*(a + b for a, b in zip(previous.to_json().values(), stats.to_json().values())))
            out[self.labels[i]] = stats
        return out

    def counts(self, program: Program) -> Optional[Counts]:
        if self.spec.count_by is None:
            return None
        fields = tuple(str(f) for f in self.spec.count_by)
        items: Dict[Tuple, int] = {}
        if not self.spec.count_by:  # counts by probe only: the in-kernel hit counters
            for label, stats in self.stats(program).items():
                if stats.hits:
                    items[(label,)] = stats.hits
            return Counts(fields, items)
        for key, value in program.table("counts").items():
            row: List[object] = [self.labels[key.probe]]
            for fld in self.spec.count_by:
                row.append(self._key_value(program, key, fld))
            items[tuple(row)] = items.get(tuple(row), 0) + int(value.value)
        return Counts(fields, items)

    def _key_value(self, program: Program, key: ctypes.Structure, fld: Field) -> object:
        """A map key member as a Python value (strings decoded, signed arguments signed)."""
        raw = getattr(key, f"k_{fld.key_name}")
        if fld.name in ("comm", "str"):
            return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")
        if fld.name == "ustack":
            return self._folded(program, signed64(raw), self._key_pid(key))
        signs = self.signs[key.probe]
        if fld.name == "arg" and fld.index < len(signs) and signs[fld.index][0]:
            return signed64(raw)
        return int(raw)

    def _key_pid(self, key: ctypes.Structure) -> int:
        if self.spec.pid is not None:
            return self.spec.pid
        return int(getattr(key, "k_pid", -1))

    def frames(self, program: Program, stack_id: int, pid: int, detail: bool = True) -> Tuple[str, ...]:
        return tuple(self._symbolizer.symbolize(pid, address, detail) for address in program.stack(stack_id))

    def observe_stack_owners(self, program: Program) -> None:
        """Snapshot the mappings of traced processes while they live, to name their stacks later."""
        if not self.spec.needs_stacks:
            return
        if self.spec.pid is not None:
            self._symbolizer.observe(self.spec.pid)
        elif self.spec.count_by and any(f.name == "ustack" for f in self.spec.count_by):
            for key in program.table("counts").keys():
                pid = int(getattr(key, "k_pid", 0))
                if pid and not self._symbolizer.knows(pid):
                    self._symbolizer.observe(pid)

    def _folded(self, program: Program, stack_id: int, pid: int) -> str:
        """Root-first frames joined by ``;``: the folded format flame graph tools read."""
        if stack_id < 0:
            return "[no stack]"
        frames = self.frames(program, stack_id, pid, detail=False)
        return ";".join(reversed(frames)) or "[empty stack]"

    def histograms(self, program: Program) -> Optional[Dict[str, Histogram]]:
        hist = self.spec.hist
        if hist is None:
            return None
        unit = "ns" if hist.field.name == "latency" else ""
        out: Dict[str, Histogram] = {}
        for key, value in program.table("hist").items():
            label = self.labels[key.probe]
            if hist.by is not None:
                label = (label, self._key_value(program, key, hist.by))
            h = out.setdefault(label, Histogram(hist.kind, {}, hist.low, hist.high, hist.step, unit))
            h.buckets[key.slot] = h.buckets.get(key.slot, 0) + int(value.value)
        return out
