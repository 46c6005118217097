"""USDT semaphores written by hand, for kernels without the uprobe reference counter.

A probe with a semaphore only prepares its arguments when a 16-bit counter in the process is nonzero.
Kernels since 4.20 maintain the counter themselves (``ref_ctr_offset``, see :mod:`usdtkit.bpf.perf_uprobe`)
and usdtkit uses that whenever it exists.  Older kernels leave it to the tracer: this module increments
the counter through ``/proc/PID/mem`` at attach and decrements it at detach, on every exit path usdtkit
controls (context exit, exceptions, SIGINT/SIGTERM through the CLI, interpreter exit).  A tracer killed
with SIGKILL cannot undo its increment; that is the limit ``usdtkit doctor`` warns about.
"""
from __future__ import annotations

import atexit
import os
import threading
from typing import Dict, List, Optional, Tuple

from ..errors import AttachError, NoSuchProcess

_Key = Tuple[int, int]  # (pid, runtime address)


def semaphore_address(pid: int, path: str, file_offset: int) -> Optional[int]:
    """The runtime address of the byte at ``file_offset`` of ``path`` in ``pid``, if it is mapped."""
    try:
        real = os.path.realpath(path)
        target = os.stat(path)
    except OSError:
        return None
    try:
        with open(f"/proc/{pid}/maps") as maps:
            lines = maps.readlines()
    except FileNotFoundError:
        raise NoSuchProcess(pid) from None
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        device, inode = fields[3], int(fields[4])
        name = fields[5].strip()
        if inode != target.st_ino and os.path.realpath(name) != real:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        offset = int(fields[2], 16)
        if offset <= file_offset < offset + (end - start):
            return start + file_offset - offset
    return None


class SemaphoreWriter:
    """Increments semaphores in target processes and guarantees the matching decrements."""

    def __init__(self) -> None:
        self._held: Dict[_Key, int] = {}
        self._lock = threading.Lock()
        atexit.register(self.release_all)

    @staticmethod
    def _add(pid: int, address: int, delta: int) -> int:
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(address)
            value = int.from_bytes(mem.read(2), "little")
            new = max(0, min(0xFFFF, value + delta))
            mem.seek(address)
            mem.write(new.to_bytes(2, "little"))
            return new

    def acquire(self, pid: int, path: str, file_offset: int) -> None:
        address = semaphore_address(pid, path, file_offset)
        if address is None:
            raise AttachError(f"pid {pid}: semaphore at {path}+{file_offset:#x} is not mapped")
        try:
            self._add(pid, address, +1)
        except OSError as exc:
            raise AttachError(f"pid {pid}: cannot write semaphore: {exc.strerror}") from None
        with self._lock:
            self._held[(pid, address)] = self._held.get((pid, address), 0) + 1

    def release_all(self) -> List[str]:
        """Undo every increment; returns the ones that could not be undone (process gone...)."""
        problems = []
        with self._lock:
            held, self._held = self._held, {}
        for (pid, address), count in held.items():
            try:
                self._add(pid, address, -count)
            except OSError as exc:
                if os.path.exists(f"/proc/{pid}"):
                    problems.append(f"pid {pid}: semaphore at {address:#x}: {exc.strerror}")
        return problems

    def close(self) -> None:
        self.release_all()
        atexit.unregister(self.release_all)
