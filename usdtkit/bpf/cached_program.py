"""A :class:`~usdtkit.bpf.backend.LoadedProgram` loaded from a cached object, without bcc.

From a :class:`~usdtkit.bpf.objcache.CompiledObject` it creates the maps (``bpf(BPF_MAP_CREATE)``),
writes their fds into each function's map loads and loads the function when it is first attached
(``BPF_PROG_LOAD``: a kprobe program for uprobes, with ``expected_attach_type`` uprobe_multi for multi
links, a tracepoint program for tracepoints).  Maps are read and written through :mod:`.bpfcalls`, per-CPU
values summed; the ring buffer is read by :mod:`.ringbuf`.  Closing detaches everything and closes every
fd it made, so the kernel frees the programs and maps.
"""
from __future__ import annotations

import os
import struct
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import AttachError
from . import bpfcalls, uprobe_multi
from .attaching import Attaching
from .backend import RecordCallback
from .layout import WAKE_MAP, ProgramLayout
from .objcache import CompiledObject, Table
from .ringbuf import NativeDrain, RingBuffer

_STACK_ADDRESS = struct.Struct("<Q")


class CachedProgram(Attaching):
    """The maps and programs of a cached object, created and loaded by raw system calls."""

    def __init__(self, obj: CompiledObject, layout: ProgramLayout) -> None:
        self.layout = layout
        self._obj = obj
        self._init_attaching()
        self._maps: Dict[str, Tuple[int, Table]] = {}
        self._fds: Dict[str, int] = {}
        self._ring: Optional[RingBuffer] = None
        self._map_fds: List[int] = []
        try:
            for table in obj.tables:
                fd = bpfcalls.create_map(table.map_type, table.key_size, table.value_size, table.max_entries,
                                         table.flags, table.name)
                self._map_fds.append(fd)
                self._maps[table.name] = (fd, table)
        except BaseException:
            self.close()
            raise

    def program_fd(self, function: str, multi: bool = False, tracepoint: bool = False) -> int:
        fd = self._fds.get(function)
        if fd is None:
            compiled = self._obj.functions.get(function)
            if compiled is None:
                raise AttachError(f"internal error: the cached program has no function {function}")
            insns = bytearray(compiled.insns)
            for at, table in compiled.map_refs:
                struct.pack_into("<i", insns, at * 8 + 4, self._map_fds[table])
            kind = bpfcalls.PROG_TYPE_TRACEPOINT if tracepoint else bpfcalls.PROG_TYPE_KPROBE
            fd = bpfcalls.load_program(kind, bytes(insns), function, self._obj.license, self._obj.kern_version,
                                       uprobe_multi.BPF_TRACE_UPROBE_MULTI if multi else 0)
            self._fds[function] = fd
        return fd

    def preload(self, layout: ProgramLayout, multi: bool) -> None:
        """Load every function the layout attaches, as it will be attached (uprobe_multi links when
        ``multi``): a function the kernel refuses is found before anything is attached."""
        for function in dict.fromkeys(a.function for a in layout.attachments):
            self.program_fd(function, multi=multi)
        for tracepoint in layout.tracepoints:
            self.program_fd(tracepoint.function, tracepoint=True)

    def _unload(self, function: str) -> None:
        fd = self._fds.pop(function, None)
        if fd is not None:
            os.close(fd)

    def _map(self, name: str) -> Tuple[int, Table]:
        found = self._maps.get(name)
        if found is None:
            raise AttachError(f"internal error: the cached program has no map {name}")
        return found

    def _value(self, table: Table, raw: bytes) -> int:
        if table.map_type not in bpfcalls.PERCPU_MAP_TYPES:
            return int.from_bytes(raw[:table.value_size], "little")
        slot = (table.value_size + 7) // 8 * 8
        return sum(int.from_bytes(raw[at:at + table.value_size], "little") for at in range(0, len(raw), slot))

    def read_map(self, name: str) -> List[Tuple[bytes, int]]:
        """Every entry as (key bytes, value); per-CPU values summed."""
        fd, table = self._map(name)
        size = bpfcalls.value_bytes(table.map_type, table.value_size)
        out = []
        for key in bpfcalls.keys(fd, table.key_size):
            raw = bpfcalls.lookup(fd, key, size)
            if raw is not None:
                out.append((key, self._value(table, raw)))
        return out

    def update_map(self, name: str, key: bytes, value: int) -> None:
        """Set ``key`` to ``value`` (on every CPU's slot of a per-CPU map)."""
        fd, table = self._map(name)
        one = value.to_bytes(table.value_size, "little")
        if table.map_type in bpfcalls.PERCPU_MAP_TYPES:
            one = one.ljust((table.value_size + 7) // 8 * 8, b"\0") * bpfcalls.possible_cpus()
        bpfcalls.update(fd, key, one)

    def set_config(self, index: int, value: int) -> None:
        self.update_map("config", index.to_bytes(4, "little"), value)

    def delete_keys(self, name: str, keys: Sequence[bytes]) -> int:
        fd, _table = self._map(name)
        return sum(1 for key in keys if bpfcalls.delete(fd, key))

    def stack(self, stack_id: int) -> List[int]:
        """Addresses of a stack recorded in the ``stacks`` map, innermost first."""
        if stack_id < 0 or "stacks" not in self._maps:
            return []
        fd, table = self._maps["stacks"]
        raw = bpfcalls.lookup(fd, stack_id.to_bytes(4, "little"), table.value_size)
        if raw is None:
            return []
        return [addr for (addr,) in _STACK_ADDRESS.iter_unpack(raw) if addr]

    def run_stats(self) -> Tuple[int, int]:
        from .prog_stats import run_stats

        return run_stats(self._fds.values())

    def open_events(self, on_record: RecordCallback, on_lost: Optional[Callable[[int], None]] = None,
                    pages: int = 64, drain: Optional[NativeDrain] = None) -> bool:
        """Deliver the records of the ``events`` ring buffer, to ``drain`` when one is given (then True is
        returned); the wake flag, where the program has one, tells it when the reader waits."""
        fd, _table = self._map("events")
        wake = None
        if WAKE_MAP in self._maps:
            def wake(on: bool) -> None:
                self.update_map(WAKE_MAP, (0).to_bytes(4, "little"), int(on))
        self._ring = RingBuffer(fd, on_record, wake)
        self._ring.set_drain(drain)
        return drain is not None

    def consume(self, timeout_ms: int, budget_s: float) -> None:
        if self._ring is not None:
            self._ring.poll(timeout_ms, budget_s)

    def close(self) -> None:
        self.detach_all()
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()
        for fd in list(self._fds.values()) + self._map_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        self._map_fds.clear()
        self._maps.clear()

    def __enter__(self) -> "CachedProgram":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
