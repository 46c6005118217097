"""The two raw system calls usdtkit makes itself (bcc does not expose what it needs of them).

``perf_event_open`` (uprobes with a semaphore offset) and ``bpf`` (``BPF_LINK_CREATE`` for
uprobe_multi links and perf links with attach cookies) have no libc wrappers; they are called by
number through ``syscall(2)``.
"""
from __future__ import annotations

import ctypes
import platform
from typing import Optional, Tuple

_NUMBERS = {
    "perf_event_open": {"x86_64": 298, "aarch64": 241},
    "bpf": {"x86_64": 321, "aarch64": 280},
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def number(name: str) -> Optional[int]:
    """The system call number of ``name`` on this architecture, or None if usdtkit does not know it."""
    return _NUMBERS[name].get(platform.machine())


def call(nr: int, *args: object) -> Tuple[int, int]:
    """``syscall(nr, *args)``: the result and, when it is negative, errno."""
    result = _libc.syscall(nr, *args)
    return int(result), (ctypes.get_errno() if result < 0 else 0)
