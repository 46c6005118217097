"""Uprobes as perf events: ``perf_event_open`` on the ``uprobe`` PMU, with the semaphore refcount.

A perf-event uprobe is owned by its file descriptor: the kernel removes the breakpoint when the last fd
closes, including when the tracer is killed, and never creates a tracefs entry.  The PMU takes

* ``config1``: a pointer to the binary's path, ``config2``: the file offset of the probed instruction;
* ``config`` bit ``retprobe`` (from ``format/retprobe``) for a return probe;
* ``config`` bits ``ref_ctr_offset`` (from ``format/ref_ctr_offset``, usually 32-63): the file offset of a
  USDT semaphore.  The kernel then increments that 16-bit counter in every process mapping the file
  while the event exists, and decrements it when the event goes, so a killed tracer leaves no
  semaphore set.  (bcc 0.26's Python binding drops this argument: bcc issue 5236.)

A tracepoint is a perf event of type ``PERF_TYPE_TRACEPOINT`` with the tracepoint's tracefs id as
``config`` (:func:`open_tracepoint`).  A BPF program is attached to either with ``PERF_EVENT_IOC_SET_BPF``,
or, to give it an attach cookie (kernel 5.15), through a BPF perf link: ``BPF_LINK_CREATE`` with
``attach_type = BPF_PERF_EVENT``, the event's fd as ``target_fd`` and the cookie in
``link_create.perf_event.bpf_cookie``; the event is then started with ``PERF_EVENT_IOC_ENABLE``.  With
``pid=-1`` the uprobe applies to every process that maps the file; the
``cpu`` argument must then name a CPU, but uprobe BPF programs run on whichever CPU hits the probe.
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import fcntl
import os
from typing import Optional

from ..errors import AttachError, EnvironmentProblem
from . import syscalls
from .capabilities import detect

_PERF_FLAG_FD_CLOEXEC = 1 << 3
_PERF_EVENT_IOC_ENABLE = 0x2400
_PERF_EVENT_IOC_DISABLE = 0x2401
_PERF_EVENT_IOC_SET_BPF = 0x40042408
_PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5: enough for every field used here
_PERF_TYPE_TRACEPOINT = 2
_BPF_LINK_CREATE = 28
_BPF_PERF_EVENT = 41  # enum bpf_attach_type
_LINK_ATTR_SIZE = 64


class _PerfEventAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
        ("_rest", ctypes.c_uint8 * (_PERF_ATTR_SIZE - 72)),
    ]




def open_uprobe(path: str, offset: int, pid: int = -1, retprobe: bool = False,
                ref_ctr_offset: int = 0) -> int:
    """Create a disabled uprobe perf event at ``path``+``offset`` and return its fd."""
    caps = detect()
    if not caps.has_uprobe_pmu:
        raise EnvironmentProblem("this kernel has no uprobe PMU (/sys/bus/event_source/devices/uprobe)")
    if ref_ctr_offset and not caps.has_sema_refcnt:
        raise EnvironmentProblem("this kernel cannot maintain USDT semaphores (no ref_ctr_offset)")
    if not 0 <= ref_ctr_offset < (1 << 32):
        raise AttachError(f"{path}: semaphore offset {ref_ctr_offset:#x} out of range")
    nr = syscalls.number("perf_event_open")
    if nr is None:
        raise EnvironmentProblem(f"unsupported architecture {os.uname().machine}")
    encoded = os.fsencode(path)
    path_buf = ctypes.create_string_buffer(encoded)
    attr = _PerfEventAttr()
    attr.type = caps.uprobe_pmu_type
    attr.size = _PERF_ATTR_SIZE
    attr.sample_period = 1
    attr.wakeup_events = 1
    attr.flags = 1  # disabled until a program is attached
    attr.config1 = ctypes.addressof(path_buf)
    attr.config2 = offset
    if retprobe:
        attr.config |= 1 << (caps.retprobe_bit or 0)
    if ref_ctr_offset:
        attr.config |= ref_ctr_offset << caps.ref_ctr_shift
    cpu = 0 if pid == -1 else -1
    fd, err = syscalls.call(nr, ctypes.byref(attr), pid, cpu, -1, _PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        where = f"{path}+{offset:#x}" + (f" pid {pid}" if pid != -1 else "")
        if err in (errno_mod.EPERM, errno_mod.EACCES):
            raise EnvironmentProblem(f"not allowed to create a uprobe at {where}: {os.strerror(err)}")
        if err == errno_mod.ESRCH:
            raise AttachError(f"cannot attach at {where}: the process does not exist")
        if err == errno_mod.EINVAL and ref_ctr_offset:
            raise AttachError(f"cannot create uprobe at {where}: the kernel refused it (another uprobe on "
                              "this instruction uses a different semaphore offset, or it is not a valid site)")
        raise AttachError(f"cannot create uprobe at {where}: {syscalls.describe(err)}")
    return fd


def open_tracepoint(tracepoint_id: int, label: str) -> int:
    """Create a disabled perf event for the tracepoint with this tracefs id (``label`` names it in
    errors) and return its fd.  Its BPF program runs wherever the tracepoint fires, on any CPU."""
    nr = syscalls.number("perf_event_open")
    if nr is None:
        raise EnvironmentProblem(f"unsupported architecture {os.uname().machine}")
    attr = _PerfEventAttr()
    attr.type = _PERF_TYPE_TRACEPOINT
    attr.size = _PERF_ATTR_SIZE
    attr.config = tracepoint_id
    attr.sample_period = 1
    attr.wakeup_events = 1
    attr.flags = 1  # disabled until a program is attached
    fd, err = syscalls.call(nr, ctypes.byref(attr), -1, 0, -1, _PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        if err in (errno_mod.EPERM, errno_mod.EACCES):
            raise EnvironmentProblem(f"not allowed to open tracepoint {label}: {os.strerror(err)}")
        raise AttachError(f"cannot open tracepoint {label}: {os.strerror(err)}")
    return fd


def attach_program(event_fd: int, prog_fd: int, what: str = "uprobe") -> None:
    """Attach a loaded BPF program to a uprobe (or tracepoint) event and enable it."""
    try:
        fcntl.ioctl(event_fd, _PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(event_fd, _PERF_EVENT_IOC_ENABLE, 0)
    except OSError as exc:
        raise AttachError(f"cannot attach BPF program to {what}: {exc.strerror}") from None


class _LinkCreatePerfEvent(ctypes.Structure):
    """``union bpf_attr`` for ``BPF_LINK_CREATE`` of a perf event: four 32-bit words, then the cookie."""

    _fields_ = [(name, ctypes.c_uint32) for name in ("prog_fd", "target_fd", "attach_type", "flags")] + [
        ("bpf_cookie", ctypes.c_uint64), ("_rest", ctypes.c_uint8 * (_LINK_ATTR_SIZE - 24))]


def link_program(event_fd: int, prog_fd: int, cookie: int) -> int:
    """Attach a loaded BPF program to a uprobe event through a BPF perf link carrying ``cookie``, enable
    the event, and return the link's fd (closing it detaches the program)."""
    nr = syscalls.number("bpf")
    if nr is None:
        raise EnvironmentProblem(f"unsupported architecture {os.uname().machine}")
    attr = _LinkCreatePerfEvent(prog_fd=prog_fd, target_fd=event_fd, attach_type=_BPF_PERF_EVENT,
                                bpf_cookie=cookie)
    fd, err = syscalls.call(nr, _BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        raise AttachError(f"cannot link BPF program to uprobe: {os.strerror(err)}")
    try:
        fcntl.ioctl(event_fd, _PERF_EVENT_IOC_ENABLE, 0)
    except OSError as exc:
        os.close(fd)
        raise AttachError(f"cannot enable uprobe: {exc.strerror}") from None
    return fd


def close_event(event_fd: Optional[int]) -> None:
    """Disable and close a uprobe (or tracepoint) event; the kernel removes the breakpoint and the
    semaphore count, and detaches the program."""
    if event_fd is None or event_fd < 0:
        return
    try:
        fcntl.ioctl(event_fd, _PERF_EVENT_IOC_DISABLE, 0)
    except OSError:
        pass
    try:
        os.close(event_fd)
    except OSError:
        pass
