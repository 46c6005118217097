"""Attaching loaded programs: what every :class:`~usdtkit.bpf.backend.LoadedProgram` does the same way,
whoever compiled and loaded the programs.

A loaded program only has to say how it turns a function name into a program fd (:meth:`program_fd`)
and how it drops one loaded for the wrong attach type (:meth:`_unload`); the links and perf events made
here (:mod:`.uprobe_multi`, :mod:`.perf_uprobe`) are owned by the program and closed by
:meth:`detach_all`, which removes the uprobes and their semaphore counts.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from . import capabilities, perf_uprobe, tracefs, uprobe_multi


class Attaching:
    """Attachment of a program's functions at call sites and tracepoints (a mixin)."""

    _events: List[int]
    _multi: bool
    links: int  # uprobe_multi links made (the rest of the attachments are perf events)

    def _init_attaching(self) -> None:
        self._events = []
        self._multi = True
        self.links = 0

    def program_fd(self, function: str, multi: bool = False, tracepoint: bool = False) -> int:
        """Load (once) ``function`` as a uprobe program, for uprobe_multi links with ``multi``, or as a
        tracepoint program, and return its fd."""
        raise NotImplementedError

    def _unload(self, function: str) -> None:
        raise NotImplementedError

    def attach(self, function: str, path: str, offsets: Sequence[int], ref_ctr_offsets: Sequence[int],
               pid: int = -1, retprobe: bool = False, cookies: Optional[Sequence[int]] = None) -> None:
        """Attach ``function`` at every offset of ``path``: one uprobe_multi link where the kernel has
        them (fast to attach and to detach), else one perf event per site; ``cookies`` (one per offset)
        are what the function's ``bpf_get_attach_cookie`` returns there."""
        if self._multi and capabilities.detect().has_uprobe_multi:
            prog_fd = self.program_fd(function, multi=True)
            try:
                self._events.append(uprobe_multi.attach(prog_fd, path, offsets, ref_ctr_offsets, pid, retprobe,
                                                        cookies))
                self.links += 1
                return
            except uprobe_multi.Unsupported:
                self._multi = False  # an older kernel: perf events from now on
                self._unload(function)
        marks: Sequence[Optional[int]] = cookies if cookies is not None else [None] * len(offsets)
        for offset, ref_ctr, cookie in zip(offsets, ref_ctr_offsets, marks):
            self.attach_uprobe(function, path, offset, pid, retprobe, ref_ctr, cookie)

    def attach_uprobe(self, function: str, path: str, offset: int, pid: int = -1,
                      retprobe: bool = False, ref_ctr_offset: int = 0, cookie: Optional[int] = None) -> int:
        """Attach ``function`` at ``path``+``offset`` (through a perf link carrying ``cookie`` when one is
        given); returns the perf event fd (owned here)."""
        prog_fd = self.program_fd(function)
        event_fd = perf_uprobe.open_uprobe(path, offset, pid, retprobe, ref_ctr_offset)
        self._events.append(event_fd)
        if cookie is None:
            perf_uprobe.attach_program(event_fd, prog_fd)
        else:
            self._events.append(perf_uprobe.link_program(event_fd, prog_fd, cookie))
        return event_fd

    def attach_tracepoint(self, function: str, category: str, name: str) -> None:
        """Attach ``function`` to kernel tracepoint ``category:name`` (a perf event owned here)."""
        label = f"{category}:{name}"
        event_fd = perf_uprobe.open_tracepoint(tracefs.event_id(category, name), label)
        self._events.append(event_fd)
        perf_uprobe.attach_program(event_fd, self.program_fd(function, tracepoint=True), f"tracepoint {label}")

    def detach_all(self) -> None:
        """Close every uprobe link and event; the kernel removes the breakpoints and semaphore counts."""
        while self._events:
            perf_uprobe.close_event(self._events.pop())
