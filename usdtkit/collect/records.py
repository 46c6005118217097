"""Decode the event records a generated program writes, fast.

The record layout comes from the program's :class:`~usdtkit.bpf.layout.ProgramLayout` (the same
description that declared the C struct).  Everything that does not change per event (labels,
signedness, which string slots apply to which probe, where each member sits) is worked out once per
probe in :class:`ProbeDecoder`; decoding a record is then one ``struct.unpack`` and a tuple build.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

from ..bpf.layout import StructLayout
from .results import Event
from .text import c_string, decode_text, signed64

__all__ = ["ProbeDecoder", "RecordDecoder", "signed64"]


class ProbeDecoder:
    """Per-probe knowledge for turning a record into an :class:`Event`."""

    def __init__(self, label: str, arg_count: int, signed: Sequence[bool], string_slots: Sequence[Tuple[int, int]],
                 is_return: bool, has_latency: bool) -> None:
        self.label = label
        self.arg_count = arg_count
        self.signed = [i for i, s in enumerate(signed) if s]
        self.string_slots = list(string_slots)  # (slot, argument index)
        self.is_return = is_return
        self.has_latency = has_latency


class RecordDecoder:
    """Decodes raw records (bytes, as the backend delivers them) into events."""

    def __init__(self, layout: StructLayout, probes: Sequence[ProbeDecoder], string_size: int,
                 stack_of: Optional[Callable[[int, int], Tuple[str, ...]]] = None) -> None:
        self.probes = list(probes)
        self.layout = layout
        self.format = layout.format
        self.size = layout.size
        self.string_size = string_size
        self.stack_of = stack_of
        flat, at = {}, 0
        for member in layout.members:
            flat[member.name] = at
            at += member.count if member.is_array and member.ctype != "char" else 1
        self._head = tuple(flat[n] for n in ("ts", "pid", "tid", "probe", "cpu", "errs", "stack", "latency",
                                             "retval"))
        self._args = flat["args"]
        self._comm = flat["comm"]
        self._str = [flat[m.name] for m in layout.members if m.name.startswith("str")]

    def decode(self, data: bytes) -> Event:
        fields = self.format.unpack_from(data)
        ts, pid, tid, index, cpu, errs, stack, latency, retval = (fields[i] for i in self._head)
        probe = self.probes[index]
        args: List[object] = list(fields[self._args:self._args + probe.arg_count])
        for i in probe.signed:
            args[i] = signed64(args[i])
        truncated = []
        for slot, i in probe.string_slots:
            text, cut = decode_text(fields[self._str[slot]], self.string_size)
            args[i] = text
            if cut:
                truncated.append(i)
        if errs:
            for i in range(probe.arg_count):
                if errs & (1 << i):
                    args[i] = None
        comm = c_string(fields[self._comm])
        frames = self.stack_of(stack, pid) if self.stack_of is not None else None
        return Event(probe.label, pid, tid, ts, cpu, comm, tuple(args),
                     retval if probe.is_return else None, latency if probe.has_latency else None, frames,
                     tuple(truncated))
