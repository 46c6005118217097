"""The two raw system calls usdtkit makes itself (bcc does not expose what it needs of them).

``perf_event_open`` (uprobes with a semaphore offset) and ``bpf`` (``BPF_LINK_CREATE`` for
uprobe_multi links and perf links with attach cookies) have no libc wrappers; they are called by
number through ``syscall(2)``.
"""
from __future__ import annotations

import ctypes
import os
from typing import Optional, Tuple

_NUMBERS = {
    "perf_event_open": {"x86_64": 298, "aarch64": 241},
    "bpf": {"x86_64": 321, "aarch64": 280},
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def number(name: str) -> Optional[int]:
    """The system call number of ``name`` on this architecture, or None if usdtkit does not know it."""
    return _NUMBERS[name].get(os.uname().machine)


def call(nr: int, *args: object) -> Tuple[int, int]:
    """``syscall(nr, *args)``: the result and, when it is negative, errno."""
    result = _libc.syscall(nr, *args)
    return int(result), (ctypes.get_errno() if result < 0 else 0)


ENOTSUPP = 524  # the kernel's own "operation not supported", which userspace has no name for


def describe(err: int) -> str:
    """``errno`` in words, including the kernel-internal ``ENOTSUPP`` a uprobe gets where the kernel
    will not probe the instruction at the offset (x86: AVX's VEX-encoded instructions, among others).
    The kernel looks at the instruction when it places the breakpoint in a process mapping the file, so
    a file nobody maps yet is accepted, and the probe is never placed."""
    if err == ENOTSUPP:
        return "the kernel refuses to probe the instruction there (ENOTSUPP; an AVX instruction, for one)"
    return os.strerror(err)
