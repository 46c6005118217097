"""Cgroup v2 directories as the numbers BPF programs see: ``bpf_get_current_cgroup_id()``.

In the unified (v2) hierarchy every cgroup is a directory of the ``cgroup2`` filesystem, and the id the
kernel gives BPF programs for the current task's cgroup is that directory's inode number.  A container
or a systemd service is one such directory (``/sys/fs/cgroup/system.slice/postgresql.service``, or under
``/sys/fs/cgroup/unified`` on hybrid systems), so selecting hits by cgroup is comparing one number.  A
cgroup that is removed and made again gets a new id: making the plan again follows it.
"""
from __future__ import annotations

import os
from typing import List

from ..errors import TargetError


def cgroup2_mounts() -> List[str]:
    """Where the cgroup v2 filesystem is mounted (from ``/proc/self/mountinfo``)."""
    out = []
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    out.append(left.split(" ")[4].replace("\\040", " "))
    except OSError:
        pass
    return out


def cgroup_id(path: str) -> int:
    """The id of the cgroup v2 directory ``path``, or :class:`TargetError` saying why it is not one."""
    mounts = cgroup2_mounts()
    if not mounts:
        raise TargetError("cgroup v2 is not mounted here: selecting by cgroup needs it")
    real = os.path.realpath(path)
    if not any(real == m or real.startswith(m.rstrip("/") + "/") for m in mounts):
        raise TargetError(f"{path}: not in a cgroup v2 hierarchy (mounted at {', '.join(mounts)})")
    try:
        info = os.stat(real)
    except OSError as exc:
        raise TargetError(f"{path}: {exc.strerror}") from None
    if not os.path.isdir(real):
        raise TargetError(f"{path}: not a cgroup directory")
    return info.st_ino
