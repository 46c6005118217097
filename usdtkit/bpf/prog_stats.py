"""How long the kernel spent in a program: ``run_time_ns`` and ``run_cnt`` from ``BPF_OBJ_GET_INFO_BY_FD``.

The kernel counts them only while run-time statistics are on (kernel 5.8, commit d46edd671a14 "bpf:
Sharing bpf runtime stats with BPF_ENABLE_STATS"): :func:`enable_run_time_stats` turns them on for as long
as the returned fd stays open, and they go off again when the last such fd closes (a killed tracer
included), unlike the global ``kernel.bpf_stats_enabled`` sysctl, which stays on.  Counting costs two
clock reads per program run, so only a caller that reports it (the exporter) asks for it.
"""
from __future__ import annotations

import ctypes
import os
from typing import Iterable, Optional, Tuple

from . import syscalls

_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_ENABLE_STATS = 32
_BPF_STATS_RUN_TIME = 0


class _ProgInfo(ctypes.Structure):
    """``struct bpf_prog_info`` up to the run-time counters (the kernel fills what fits)."""

    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32), ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64), ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32), ("nr_line_info", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64), ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32), ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32), ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64), ("run_cnt", ctypes.c_uint64),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


def enable_run_time_stats() -> Optional[int]:
    """Turn run-time statistics on; returns the fd that keeps them on (close it to stop), or None when
    this kernel or these privileges do not allow it."""
    nr = syscalls.number("bpf")
    if nr is None:
        return None
    attr = ctypes.c_uint32(_BPF_STATS_RUN_TIME)
    fd, _err = syscalls.call(nr, _BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    return fd if fd >= 0 else None


def run_stats(prog_fds: Iterable[int]) -> Tuple[int, int]:
    """``(run_time_ns, run_cnt)`` summed over the programs (zeros where the kernel says nothing)."""
    nr = syscalls.number("bpf")
    total_ns = total_runs = 0
    if nr is None:
        return (0, 0)
    for fd in prog_fds:
        info = _ProgInfo()
        attr = _InfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info))
        result, _err = syscalls.call(nr, _BPF_OBJ_GET_INFO_BY_FD, ctypes.byref(attr), ctypes.sizeof(attr))
        if result == 0:
            total_ns += info.run_time_ns
            total_runs += info.run_cnt
    return (total_ns, total_runs)


def close_stats(fd: Optional[int]) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
