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
import errno
import os
import threading
from typing import Dict, List, Optional, Tuple

from ..elf.process import parse_device, read_maps
from ..errors import AttachError

_Key = Tuple[int, int]  # (pid, runtime address)


def _add(mem_fd: int, address: int, delta: int) -> int:
    """Add ``delta`` to the 16-bit counter at ``address`` through an open ``/proc/PID/mem``."""
    value = int.from_bytes(os.pread(mem_fd, 2, address), "little")
    new = max(0, min(0xFFFF, value + delta))
    os.pwrite(mem_fd, new.to_bytes(2, "little"), address)
    return new


def semaphore_address(pid: int, path: str, file_offset: int) -> Optional[int]:
    """The runtime address of the byte at ``file_offset`` of ``path`` in ``pid``, in a private writable
    mapping of that very file (device and inode), if there is one."""
    try:
        target = os.stat(path)
    except OSError:
        return None
    for mapping, _, device, inode in read_maps(pid):
        if inode != target.st_ino or parse_device(device) != target.st_dev:
            continue
        if not mapping.perms.startswith("rw") or mapping.perms[3] != "p":
            continue
        if mapping.offset <= file_offset < mapping.offset + (mapping.end - mapping.start):
            return mapping.start + file_offset - mapping.offset
    return None


class SemaphoreWriter:
    """Increments semaphores in target processes and guarantees the matching decrements."""

    def __init__(self) -> None:
        self._held: Dict[_Key, int] = {}
        # The /proc/PID/mem fd stays open from acquire to release: it keeps naming the process it was
        # opened for, so a PID reused after the target exits is never written to.
        self._mem: Dict[int, int] = {}
        self._lock = threading.Lock()
        atexit.register(self.release_all)

    def acquire(self, pid: int, path: str, file_offset: int) -> None:
        address = semaphore_address(pid, path, file_offset)
        if address is None:
            raise AttachError(
                f"pid {pid} does not map {path} (yet): without kernel semaphore refcounts usdtkit can only "
                "raise the semaphores of a running process; attach to it with a PID")
        with self._lock:
            try:
                if pid not in self._mem:
                    self._mem[pid] = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
                _add(self._mem[pid], address, +1)
            except OSError as exc:
                raise AttachError(f"pid {pid}: cannot write semaphore: {exc.strerror}") from None
            self._held[(pid, address)] = self._held.get((pid, address), 0) + 1

    def release_all(self) -> List[str]:
        """Undo every increment; returns the ones that could not be undone (process gone...)."""
        problems = []
        with self._lock:
            held, self._held = self._held, {}
            mem, self._mem = self._mem, {}
        for (pid, address), count in held.items():
            try:
                _add(mem[pid], address, -count)
            except OSError as exc:  # the process exited: its memory (and semaphore) is gone with it
                if exc.errno not in (errno.ESRCH, errno.EIO):
                    problems.append(f"pid {pid}: semaphore at {address:#x}: {exc.strerror}")
        for fd in mem.values():
            os.close(fd)
        return problems

    def close(self) -> None:
        self.release_all()
        atexit.unregister(self.release_all)
