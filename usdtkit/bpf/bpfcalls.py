"""The ``bpf(2)`` commands a loader needs without libbpf or bcc: maps and programs by raw system call.

* ``BPF_MAP_CREATE`` takes the map's type, key and value sizes, entries, flags and a name (15 characters
  and a NUL) and returns its fd;
* ``BPF_MAP_LOOKUP_ELEM`` / ``UPDATE_ELEM`` / ``DELETE_ELEM`` / ``GET_NEXT_KEY`` take the map fd and
  pointers to a key and a value.  A per-CPU map's value is one slot per *possible* CPU, each rounded up
  to 8 bytes (:func:`value_bytes`);
* ``BPF_PROG_LOAD`` takes the program type, its instructions, the licence (GPL: most tracing helpers
  are GPL-only), the expected attach type (uprobe_multi links need it) and a name, and returns its fd;
  the verifier's log explains a refusal.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import os
from typing import Iterator, Optional

from ..errors import AttachError, EnvironmentProblem
from . import syscalls

MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY, PROG_LOAD = range(6)
PROG_TYPE_KPROBE = 2
PROG_TYPE_TRACEPOINT = 5
#: ``enum bpf_map_type`` values whose values are per CPU (percpu hash, percpu array, LRU percpu hash).
PERCPU_MAP_TYPES = frozenset({5, 6, 10})
_LOG_SIZE = 1 << 16


class _MapCreate(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in
                ("map_type", "key_size", "value_size", "max_entries", "map_flags", "inner_map_fd", "numa_node")] + [
        ("map_name", ctypes.c_char * 16), ("_rest", ctypes.c_uint8 * 48)]


class _MapElem(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _ProgLoad(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32), ("_rest", ctypes.c_uint8 * 64)]


def _nr() -> int:
    nr = syscalls.number("bpf")
    if nr is None:
        raise EnvironmentProblem(f"unsupported architecture {os.uname().machine}")
    return nr


@functools.lru_cache(maxsize=None)
def possible_cpus() -> int:
    """How many CPUs the kernel sizes per-CPU values for (``/sys/devices/system/cpu/possible``)."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def value_bytes(map_type: int, value_size: int) -> int:
    """Bytes of one value as lookups and updates pass it: per-CPU maps hold a rounded slot per CPU."""
    if map_type in PERCPU_MAP_TYPES:
        return ((value_size + 7) // 8 * 8) * possible_cpus()
    return value_size


def create_map(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int, name: str) -> int:
    """A new map's fd."""
    attr = _MapCreate(map_type=map_type, key_size=key_size, value_size=value_size, max_entries=max_entries,
                      map_flags=flags, map_name=name.encode()[:15])
    fd, err = syscalls.call(_nr(), MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        if err in (errno.EPERM, errno.EACCES):
            raise EnvironmentProblem(f"not allowed to create BPF map {name}: {os.strerror(err)}")
        raise AttachError(f"cannot create BPF map {name}: {os.strerror(err)}")
    return fd


def _elem(cmd: int, map_fd: int, key: Optional[ctypes.Array], value: Optional[ctypes.Array],
          flags: int = 0) -> int:
    attr = _MapElem(map_fd=map_fd, key=ctypes.addressof(key) if key is not None else 0,
                    value=ctypes.addressof(value) if value is not None else 0, flags=flags)
    result, err = syscalls.call(_nr(), cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return 0 if result == 0 else err


def lookup(map_fd: int, key: bytes, size: int) -> Optional[bytes]:
    """The value (``size`` bytes) at ``key``, or None when there is none."""
    value = ctypes.create_string_buffer(size)
    return value.raw if _elem(MAP_LOOKUP_ELEM, map_fd, ctypes.create_string_buffer(key, len(key)), value) == 0 else None


def update(map_fd: int, key: bytes, value: bytes) -> None:
    err = _elem(MAP_UPDATE_ELEM, map_fd, ctypes.create_string_buffer(key, len(key)),
                ctypes.create_string_buffer(value, len(value)))
    if err:
        raise AttachError(f"cannot update a BPF map: {os.strerror(err)}")


def delete(map_fd: int, key: bytes) -> bool:
    """Delete ``key``; False when it was not there."""
    return _elem(MAP_DELETE_ELEM, map_fd, ctypes.create_string_buffer(key, len(key)), None) == 0


def keys(map_fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of the map (a key deleted meanwhile may restart the walk, as in every map walk)."""
    current: Optional[ctypes.Array] = None
    following = ctypes.create_string_buffer(key_size)
    while _elem(MAP_GET_NEXT_KEY, map_fd, current, following) == 0:
        yield following.raw
        current = ctypes.create_string_buffer(following.raw, key_size)


def load_program(prog_type: int, insns: bytes, name: str, license: str = "GPL", kern_version: int = 0,
                 expected_attach_type: int = 0) -> int:
    """Load a program and return its fd; a refusal raises :class:`AttachError` with the verifier's last lines."""
    code = ctypes.create_string_buffer(insns, len(insns))
    licence = ctypes.create_string_buffer(license.encode())
    attr = _ProgLoad(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=ctypes.addressof(code),
                     license=ctypes.addressof(licence), kern_version=kern_version, prog_name=name.encode()[:15],
                     expected_attach_type=expected_attach_type)
    fd, err = syscalls.call(_nr(), PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        return fd
    log = ctypes.create_string_buffer(_LOG_SIZE)  # asked for only on a refusal: logging slows the verifier
    attr.log_level, attr.log_size, attr.log_buf = 1, _LOG_SIZE, ctypes.addressof(log)
    again, err2 = syscalls.call(_nr(), PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    if again >= 0:
        return again
    lines = [line for line in log.value.decode(errors="replace").splitlines() if line.strip()]
    detail = "; ".join(lines[-3:]) or os.strerror(err2 or err)
    if (err2 or err) == errno.EPERM:  # the verifier refuses with EACCES or EINVAL, privileges with EPERM
        raise EnvironmentProblem(f"not allowed to load BPF program {name}: {detail}")
    raise AttachError(f"the kernel refused program {name}: {detail}")
