"""Decode the event records the generated BPF program writes, fast.

The record layout mirrors ``struct usdtkit_event`` in :mod:`usdtkit.bpf.codegen` (naturally aligned,
so a little-endian ``struct`` format without padding describes it):

    u64 ts; u32 pid, tid, probe, cpu, errs; s32 stack; u64 latency, retval;
    u64 args[NARGS]; char comm[16]; char str[NSTR][STRING_SIZE];

Everything that does not change per event (labels, signedness, which string slots apply to which
probe) is worked out once per probe in :class:`ProbeDecoder`; decoding a record is then one
``struct.unpack_from`` of a copied buffer and a tuple build.
"""
from __future__ import annotations

import ctypes
import struct
from typing import Callable, List, Optional, Sequence, Tuple

from .results import Event

COMM_LEN = 16
_HEAD = "QIIIIIiQQ"  # ts pid tid probe cpu errs stack latency retval


def record_format(nargs: int, nstr: int, string_size: int) -> struct.Struct:
    strings = f"{string_size}s" * nstr
    return struct.Struct(f"<{_HEAD}{nargs}Q{COMM_LEN}s{strings}")


def signed64(value: int) -> int:
    """A 64-bit two's complement value read as unsigned, as the signed number it is."""
    return value - (1 << 64) if value >> 63 else value


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
    """Decodes raw records (an address and a size, from bcc's callbacks) into events."""

    def __init__(self, probes: Sequence[ProbeDecoder], nargs: int, nstr: int, string_size: int,
                 stack_of: Optional[Callable[[int, int], Tuple[str, ...]]] = None) -> None:
        self.probes = list(probes)
        self.nargs = nargs
        self.format = record_format(nargs, nstr, string_size)
        self.size = self.format.size
        self.stack_of = stack_of
        self._comm = 9 + nargs
        self._str = self._comm + 1

    def decode(self, data: int) -> Event:
        fields = self.format.unpack(ctypes.string_at(data, self.size))
        ts, pid, tid, index, cpu, errs, stack, latency, retval = fields[:9]
        probe = self.probes[index]
        args: List[object] = list(fields[9:9 + probe.arg_count])
        for i in probe.signed:
            args[i] = signed64(args[i])
        for slot, i in probe.string_slots:
            args[i] = fields[self._str + slot].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        if errs:
            for i in range(probe.arg_count):
                if errs & (1 << i):
                    args[i] = None
        comm = fields[self._comm].split(b"\0", 1)[0].decode(errors="replace")
        frames = self.stack_of(stack, pid) if self.stack_of is not None else None
        return Event(probe.label, pid, tid, ts, cpu, comm, tuple(args),
                     retval if probe.is_return else None, latency if probe.has_latency else None, frames)
