"""The seam between usdtkit and whatever compiles, loads and attaches BPF programs.

A :class:`Backend` turns a :class:`~usdtkit.bpf.layout.ProgramLayout` into a :class:`LoadedProgram`;
everything above speaks only this interface and the layout, never bcc:

* attach an entry function at call sites of one file (``attach``), each with the attach cookie that tells
  a shared function which probe fired, or to a kernel tracepoint (``attach_tracepoint``), and detach
  everything (``detach_all``);
* read a map as raw key and value bytes, per-CPU values summed (``read_map``), set a key
  (``update_map``), delete some of its keys (a long-running reader forgets series that stopped
  changing), write a ``config`` slot;
* read a recorded stack (``stack``) and the kernel's run-time counters of the programs (``run_stats``);
* deliver event records as bytes (``open_events``) and consume them with a time budget (``consume``):
  a producer that never pauses cannot keep the consumer from returning.

:mod:`.bcc_backend` implements it with bcc; :mod:`.fake` keeps maps and records in memory so that the
path layout, decoding and results has unit tests without root; a loader of cached objects can slot in
the same way.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Protocol, Sequence, Tuple

from .layout import ProgramLayout

#: Called with each record; returns True to stop consuming (the record itself has been handled).
RecordCallback = Callable[[bytes], bool]


class LoadedProgram(Protocol):
    layout: ProgramLayout
    links: int  # attachments made as multi-site links (the rest are one perf event per site)

    def attach(self, function: str, path: str, offsets: Sequence[int], ref_ctr_offsets: Sequence[int],
               pid: int = -1, retprobe: bool = False, cookies: Optional[Sequence[int]] = None) -> None: ...

    def attach_tracepoint(self, function: str, category: str, name: str) -> None: ...

    def set_config(self, index: int, value: int) -> None: ...

    def update_map(self, name: str, key: bytes, value: int) -> None: ...

    def read_map(self, name: str) -> List[Tuple[bytes, int]]: ...

    def delete_keys(self, name: str, keys: Sequence[bytes]) -> int: ...

    def stack(self, stack_id: int) -> List[int]: ...

    def run_stats(self) -> Tuple[int, int]: ...

    # ``drain`` (optional): a reader in C of ring buffer records (usdtkit.bpf.ringbuf.NativeDrain); a
    # backend that hands them to it instead of ``on_record`` returns True.
    def open_events(self, on_record: RecordCallback, on_lost: Optional[Callable[[int], None]] = None,
                    pages: int = 64, drain: Optional[Callable[..., Tuple[int, bool]]] = None) -> Optional[bool]: ...

    def consume(self, timeout_ms: int, budget_s: float) -> None: ...

    def detach_all(self) -> None: ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def load(self, layout: ProgramLayout) -> LoadedProgram: ...
