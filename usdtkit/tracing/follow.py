"""Starting to follow a process tree: attach the tracepoint programs, then put the target and its live
descendants into the program's ``followed`` map (:mod:`usdtkit.bpf.follow` explains how the kernel
keeps the map from then on).

Descendants are found through parent links (``/proc/PID/stat``): the processes whose parent chain
reaches the target; one that a daemon started and that was handed to init or a subreaper is not one.
The order makes the seeding race-free:

1. the tracepoint programs are attached first, so every process created from now on by a process in
   the map is added by the kernel;
2. the tree is read and each process missing from the map is added; a process that exited between the
   reading and its addition (its exit went by before it was in the map) is taken out again, checked
   by its start time, so its id cannot stay followed and be reused;
3. the tree is read again until it has nothing the map lacks: a child created before its parent was
   in the map is found by the next reading.
"""
from __future__ import annotations

import os
from typing import Dict, List, NamedTuple, Optional

from ..bpf.backend import LoadedProgram
from ..bpf.layout import ProgramLayout

_MAX_ROUNDS = 20  # each round adds what a tree forked while the previous one was read; this bounds a runaway


class _Process(NamedTuple):
    parent: int
    started: int  # clock ticks after boot: with the id, names one process
    alive: bool  # not a zombie (its exit has happened: it must not be added)


def _read(pid: int) -> Optional[_Process]:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    try:
        return _Process(int(fields[1]), int(fields[19]), fields[0] not in ("Z", "X", "x"))
    except (IndexError, ValueError):
        return None


def descendants(root: int) -> Dict[int, int]:
    """``root`` and every live process descended from it, each with its start time."""
    table: Dict[int, _Process] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _read(int(entry))
            if found is not None:
                table[int(entry)] = found
    children: Dict[int, List[int]] = {}
    for pid, process in table.items():
        children.setdefault(process.parent, []).append(pid)
    tree: Dict[int, int] = {}
    pending = [root] if root in table else []
    while pending:
        pid = pending.pop()
        if table[pid].alive:
            tree[pid] = table[pid].started
        pending.extend(child for child in children.get(pid, ()) if child not in tree)
    return tree


def _key(pid: int) -> bytes:
    return pid.to_bytes(4, "little")


def followed_pids(program: LoadedProgram) -> List[int]:
    """The processes the program follows now."""
    return sorted(int.from_bytes(key, "little") for key, _ in program.read_map("followed"))


def start(program: LoadedProgram, layout: ProgramLayout, root: int) -> None:
    """Attach the tracepoint programs, then follow ``root`` and its live descendants."""
    for tracepoint in layout.tracepoints:
        program.attach_tracepoint(tracepoint.function, tracepoint.category, tracepoint.name)
    for _ in range(_MAX_ROUNDS):
        present = set(followed_pids(program))
        missing = {pid: started for pid, started in descendants(root).items() if pid not in present}
        if not missing:
            return
        for pid in missing:
            program.update_map("followed", _key(pid), 1)
        for pid, started in missing.items():
            now = _read(pid)
            if now is None or not now.alive or now.started != started:
                program.delete_keys("followed", [_key(pid)])


def lost(program: LoadedProgram) -> int:
    """Children not followed because the map of followed processes was full."""
    return sum(value for _, value in program.read_map("follow_lost"))
