"""Following a process tree in the kernel: the ``followed`` map and the two tracepoint programs that
keep it, generated into the same module as the probe programs.

``followed`` is a hash map of process ids (tgids).  The session fills it with the target and its
descendants alive at attach time; from then on the kernel keeps it:

* ``task:task_newtask`` fires in the parent for every task it creates, with the child's id and its
  clone flags.  A child of a followed process is added, unless it is a thread (``CLONE_THREAD``): its
  process is followed already.  So the map holds process ids only, and never the id of a thread, which
  could outlive its entry and be given to an unrelated process.  (``sched:sched_process_fork`` fires
  for threads too and does not say which one it is.)  The child is added before it first runs.
* ``sched:sched_process_exit`` fires in each exiting thread.  The process leaves the map when its last
  thread exits (the record's ``group_dead``; on kernels without that field, when its main thread
  exits).  That is before its id can be reused: the id is freed only when the process is reaped.

A probe program then keeps a hit when its process is in the map: a child that runs ``exec`` stays
followed (same id) and its hits count wherever the probe's file is mapped, because uprobes are
attached for every process that maps the file and this map does the filtering.  A child the map had
no room for is counted in ``follow_lost``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..errors import EnvironmentProblem
from . import tracefs
from .layout import Member, StructLayout, TracepointAttachment

FOLLOWED_ENTRIES = 32768
CLONE_THREAD = 0x00010000
NEWTASK = ("task", "task_newtask")
EXIT = ("sched", "sched_process_exit")
_SIZES = {1: "u8", 4: "u32", 8: "u64"}


@dataclass(frozen=True)
class FollowFormat:
    """Where the tracepoint records hold what the programs read (offsets from tracefs ``format`` files)."""

    child_pid: int  # task_newtask: pid (4 bytes)
    clone_flags: int  # task_newtask: clone_flags (8 bytes)
    clone_flags_size: int = 8
    group_dead: Optional[int] = None  # sched_process_exit: group_dead (1 byte), where the kernel has it


def read_format() -> FollowFormat:
    """This kernel's record layouts, checked: one clear error when a tracepoint or field is missing."""
    newtask = tracefs.event_fields(*NEWTASK)
    exits = tracefs.event_fields(*EXIT)
    pid, flags = newtask.get("pid"), newtask.get("clone_flags")
    if pid is None or pid.size != 4 or flags is None or flags.size not in (4, 8):
        raise EnvironmentProblem("tracepoint task:task_newtask has no 4-byte pid and clone_flags on this kernel: "
                                 "cannot follow new processes")
    dead = exits.get("group_dead")
    return FollowFormat(pid.offset, flags.offset, flags.size,
                        dead.offset if dead is not None and dead.size == 1 else None)


def _record(name: str, fields: List[Tuple[str, int, int]]) -> StructLayout:
    """A struct with ``fields`` (name, offset, size) at their offsets, padded with bytes in between."""
    members, at = [Member("common", "u64")], 8  # the common header every record starts with
    for field, offset, size in sorted(fields, key=lambda item: item[1]):
        if offset > at:
            members.append(Member(f"before_{field}", "u8", offset - at, array=True))
        members.append(Member(field, _SIZES[size]))
        at = offset + size
    layout = StructLayout(name, tuple(members))
    placed = {m.name: off for m, off in zip(layout.members, layout.offsets)}
    if any(placed[field] != offset for field, offset, _ in fields):
        raise EnvironmentProblem(f"{name}: unaligned fields in a tracepoint record")
    return layout


def declarations(fmt: FollowFormat) -> List[str]:
    """The map and the two programs, as C lines."""
    newtask = _record("usdtkit_newtask_record", [("pid", fmt.child_pid, 4),
                                                 ("clone_flags", fmt.clone_flags, fmt.clone_flags_size)])
    lines = [
        f"BPF_HASH(followed, u32, u32, {FOLLOWED_ENTRIES});  /* ids of the followed processes */",
        "BPF_ARRAY(follow_lost, u64, 1);  /* children not followed: the map was full */",
        newtask.declaration(),
        "int usdtkit_newtask(struct usdtkit_newtask_record *record) {",
        "    u32 parent = bpf_get_current_pid_tgid() >> 32;",
        "    if (!followed.lookup(&parent)) return 0;",
        f"    if (record->clone_flags & {CLONE_THREAD:#x}) return 0;",
        "    u32 child = record->pid, one = 1;",
        "    if (followed.update(&child, &one) < 0) {",
        "        u32 slot = 0; u64 *lost = follow_lost.lookup(&slot);",
        "        if (lost) __sync_fetch_and_add(lost, 1);",
        "    }",
        "    return 0;",
        "}",
    ]
    if fmt.group_dead is not None:
        exits = _record("usdtkit_exit_record", [("group_dead", fmt.group_dead, 1)])
        lines += [exits.declaration(), "int usdtkit_exit(struct usdtkit_exit_record *record) {",
                  "    u32 process = bpf_get_current_pid_tgid() >> 32;",
                  "    if (record->group_dead) followed.delete(&process);"]
    else:
        lines += ["int usdtkit_exit(void *record) {",
                  "    u64 id = bpf_get_current_pid_tgid(); u32 process = id >> 32;",
                  "    if ((u32)id == process) followed.delete(&process);"]
    lines += ["    return 0;", "}"]
    return lines


TRACEPOINTS = (TracepointAttachment("usdtkit_newtask", *NEWTASK), TracepointAttachment("usdtkit_exit", *EXIT))
