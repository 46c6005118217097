"""tracefs, where the kernel describes its tracepoints: ``events/CATEGORY/NAME/id`` and ``.../format``.

A tracepoint BPF program is attached to a perf event opened by the tracepoint's *id*, and reads the
tracepoint's record at the byte offsets its *format* file gives (the layout changes between kernels:
6.x records ``sched_process_fork``'s names as ``__data_loc`` strings, moving every field after them).
Both are published only in tracefs.  Most systems mount it at ``/sys/kernel/tracing``; where it is not
mounted, usdtkit mounts it there when it needs it, as bpftrace does (root only).
"""
from __future__ import annotations

import ctypes
import os
import re
import stat
from dataclasses import dataclass
from typing import Dict

from ..errors import EnvironmentProblem
from .capabilities import find_tracefs

MOUNT_POINT = "/sys/kernel/tracing"
_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);")


@dataclass(frozen=True)
class EventField:
    """One field of a tracepoint record: where it is and how wide."""

    name: str
    offset: int
    size: int
    signed: bool


def _mount(path: str) -> None:
    """Mount tracefs at ``path``, a directory sysfs provides (owned by root: no other user can make,
    replace or redirect it between this check and the mount)."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise EnvironmentProblem(f"tracefs is not mounted and {path} is missing ({exc.strerror}): mount "
                                 "tracefs somewhere usdtkit looks (/sys/kernel/tracing)") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0:
        raise EnvironmentProblem(f"tracefs is not mounted and {path} is not a directory of root's: not "
                                 "mounting anything there")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", os.fsencode(path), b"tracefs", ctypes.c_ulong(0), None) != 0:
        error = ctypes.get_errno()
        if find_tracefs() is None:  # EBUSY: someone mounted it meanwhile, which is as good
            raise EnvironmentProblem(f"tracefs is not mounted and mounting it at {path} failed: "
                                     f"{os.strerror(error)}; mount it with `mount -t tracefs nodev {path}`")


def mounted() -> str:
    """Where tracefs is mounted, mounting it at :data:`MOUNT_POINT` first if it is nowhere."""
    found = find_tracefs()
    if found is None:
        _mount(MOUNT_POINT)
        found = find_tracefs()
        if found is None:
            raise EnvironmentProblem(f"tracefs was mounted at {MOUNT_POINT} but shows no tracing files")
    return found


def _event_file(category: str, name: str, what: str) -> str:
    path = os.path.join(mounted(), "events", category, name, what)
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        raise EnvironmentProblem(f"this kernel has no tracepoint {category}:{name} (no {path})") from None
    except OSError as exc:
        raise EnvironmentProblem(f"cannot read {path}: {exc.strerror}") from None


def event_id(category: str, name: str) -> int:
    """The id of tracepoint ``category:name``, for ``perf_event_open``."""
    text = _event_file(category, name, "id").strip()
    if not text.isdigit():
        raise EnvironmentProblem(f"tracepoint {category}:{name}: unexpected id {text!r}")
    return int(text)


def event_fields(category: str, name: str) -> Dict[str, EventField]:
    """The fields of tracepoint ``category:name``'s record by name (``comm`` for ``char comm[16]``)."""
    fields = {}
    for match in _FIELD.finditer(_event_file(category, name, "format")):
        words = re.sub(r"\[.*?\]", "", match["decl"]).split()
        fields[words[-1]] = EventField(words[-1], int(match["offset"]), int(match["size"]), match["signed"] == "1")
    return fields
