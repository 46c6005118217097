"""An in-memory backend: maps and records held in Python, filled by the test that uses it.

It runs no BPF.  It stands where a loaded program would, so that everything from a
:class:`~usdtkit.bpf.layout.ProgramLayout` onwards (map readout, record decoding, results, the run loop)
can be tested without root; what the kernel would write is built with the layout's own
:meth:`~usdtkit.bpf.layout.StructLayout.pack`.  Tests of real probes use the bcc backend.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

from .backend import RecordCallback
from .layout import ProgramLayout


class FakeProgram:
    """A "loaded" program: maps are dicts of key bytes to a number, records a queue of bytes."""

    def __init__(self, layout: ProgramLayout) -> None:
        self.layout = layout
        self.links = 0
        self.maps: Dict[str, Dict[bytes, int]] = {name: {} for name in layout.maps}
        self.stacks: Dict[int, List[int]] = {}
        self.config: Dict[int, int] = {}
        self.attached: List[Tuple[str, str, Tuple[int, ...], Tuple[int, ...], int, bool]] = []
        self.tracepoints: List[Tuple[str, str, str]] = []
        self.cookies: Dict[Tuple[str, str, int], int] = {}  # (function, path, offset) -> attach cookie
        self.pending: Deque[bytes] = deque()
        self.closed = False
        self._on_record: Optional[RecordCallback] = None

    # what a test does in place of the kernel
    def hit_stat(self, probe: int, which: int, count: int = 1) -> None:
        key = self.layout.stats_index(probe, which).to_bytes(4, "little")
        stats = self.maps["stats"]
        stats[key] = stats.get(key, 0) + count

    def probe_at(self, path: str, offset: int) -> int:
        """The probe index the program counts a hit at ``path``+``offset`` under: the one its entry
        function has built in, or the cookie given with the attachment there (what
        ``bpf_get_attach_cookie`` returns)."""
        for attachment in self.layout.attachments:
            site = attachment.site
            if (site.attach_path, site.file_offset) != (path, offset):
                continue
            if attachment.cookie is None:
                return attachment.probe
            return self.cookies[(attachment.function, path, offset)]
        raise KeyError(f"nothing attached at {path}+{offset:#x}")

    def hit_site(self, path: str, offset: int) -> None:
        """A hit at ``path``+``offset``, counted under the probe the program would count it under."""
        self.hit_stat(self.probe_at(path, offset), 0)

    def add(self, name: str, key: bytes, count: int = 1) -> None:
        table = self.maps[name]
        table[key] = table.get(key, 0) + count

    def emit(self, record: bytes) -> None:
        self.pending.append(record)

    # the backend interface
    def attach(self, function: str, path: str, offsets: Sequence[int], ref_ctr_offsets: Sequence[int],
               pid: int = -1, retprobe: bool = False, cookies: Optional[Sequence[int]] = None) -> None:
        self.attached.append((function, path, tuple(offsets), tuple(ref_ctr_offsets), pid, retprobe))
        for offset, cookie in zip(offsets, cookies or ()):
            self.cookies[(function, path, offset)] = cookie

    def attach_tracepoint(self, function: str, category: str, name: str) -> None:
        self.tracepoints.append((function, category, name))

    def set_config(self, index: int, value: int) -> None:
        self.config[index] = value

    def update_map(self, name: str, key: bytes, value: int) -> None:
        self.maps[name][key] = value

    def read_map(self, name: str) -> List[Tuple[bytes, int]]:
        return list(self.maps[name].items())

    def delete_keys(self, name: str, keys: Sequence[bytes]) -> int:
        table = self.maps[name]
        return sum(table.pop(key, None) is not None for key in keys)

    def stack(self, stack_id: int) -> List[int]:
        return list(self.stacks.get(stack_id, ()))

    def run_stats(self) -> Tuple[int, int]:
        return (0, 0)

    def open_events(self, on_record: RecordCallback, on_lost: Optional[Callable[[int], None]] = None,
                    pages: int = 64, drain: object = None) -> bool:
        self._on_record = on_record  # records in memory: ``drain`` reads a real ring buffer only
        return False

    def consume(self, timeout_ms: int, budget_s: float) -> None:
        while self.pending and self._on_record is not None:
            if self._on_record(self.pending.popleft()):
                break

    def detach_all(self) -> None:
        self.attached.clear()
        self.tracepoints.clear()
        self.cookies.clear()

    def close(self) -> None:
        self.detach_all()
        self.closed = True


class FakeBackend:
    """Loads layouts into :class:`FakeProgram` objects (the last one is ``program``)."""

    name = "fake"

    def __init__(self) -> None:
        self.program: Optional[FakeProgram] = None

    def load(self, layout: ProgramLayout) -> FakeProgram:
        self.program = FakeProgram(layout)
        return self.program
