"""A live end-to-end check: compile, load and attach a uprobe to this process and see it fire.

``usdtkit doctor`` runs it last; when it passes, every layer (privileges, bcc, headers, the uprobe PMU)
works together.  The probed function is libc's ``getpid``; its file offset comes from
``/proc/PID/maps`` (runtime address - mapping start + mapping offset), so no ELF parsing is involved.
"""
from __future__ import annotations

import ctypes
import os
from typing import Tuple

from ..elf.process import read_maps
from ..errors import EnvironmentProblem
from .bcc_backend import Program

_PROGRAM = r"""
BPF_ARRAY(hits, u64, 1);

int usdtkit_selftest(struct pt_regs *ctx)
{
    int zero = 0;
    u64 *value = hits.lookup(&zero);
    if (value)
        __sync_fetch_and_add(value, 1);
    return 0;
}
"""


def file_offset_of(address: int, pid: int) -> Tuple[str, int]:
    """Map a runtime address in a process to ``(file path, file offset)`` through its maps."""
    for mapping, path, _, _ in read_maps(pid):
        if mapping.start <= address < mapping.end:
            return path, address - mapping.start + mapping.offset
    raise EnvironmentProblem(f"address {address:#x} is not in a file mapping of this process")


def run(calls: int = 5) -> int:
    """Attach to ``getpid`` in this process, call it ``calls`` times, return the hits counted."""
    libc = ctypes.CDLL(None)
    address = ctypes.cast(libc.getpid, ctypes.c_void_p).value
    path, offset = file_offset_of(address, os.getpid())
    with Program(_PROGRAM) as program:
        program.attach_uprobe("usdtkit_selftest", path, offset, pid=os.getpid())
        for _ in range(calls):
            libc.getpid()
        hits = program.table("hits")[ctypes.c_int(0)].value
    if hits < calls:
        raise EnvironmentProblem(f"uprobe attached but counted {hits} of {calls} calls")
    return int(hits)
