"""The child processes of a process, from ``/proc/PID/task/*/children``."""
from __future__ import annotations

import os
from typing import List


def child_pids(pid: int) -> List[int]:
    """Direct children of ``pid`` (empty when it is gone or unreadable)."""
    out: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                out.extend(int(p) for p in handle.read().split())
        except (OSError, ValueError):
            continue
    return sorted(set(out))
