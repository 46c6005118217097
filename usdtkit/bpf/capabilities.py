"""Kernel and environment capabilities, each detected once and named.

Decisions elsewhere read ``if caps.has_sema_refcnt`` rather than comparing kernel versions:

* ``uprobe_pmu_type``: the dynamic PMU ``uprobe`` (``/sys/bus/event_source/devices/uprobe/type``,
  kernel 4.17, commit 33ea4b24277b "perf/core: Implement the 'perf_uprobe' PMU").  With it a uprobe is
  a perf event owned by a file descriptor: closing the fd (or the tracer dying) removes it, and nothing
  is left in tracefs.
* ``has_sema_refcnt``: the uprobe PMU's ``ref_ctr_offset`` format field (kernel 4.20, commit
  1cc33161a83d "uprobes: Support SDT markers having reference count (semaphore)").  The kernel then
  increments a USDT semaphore in every process that maps the file while the probe is attached and
  decrements it when the probe goes, even when the tracer is killed.
* ``has_ringbuf``: the BPF ring buffer map (kernel 5.8, commit 457f44363a88 "bpf: Implement BPF ring
  buffer and verifier support for it"); without it events go through the per-CPU perf buffer.
* ``has_uprobe_multi``: BPF uprobe_multi links (kernel 6.6, commit 89ae89f53d20 "bpf: Add multi uprobe
  link"): every call site of a probe in one link, attached and detached at once (see ``uprobe_multi``).
* ``has_bpf_cookie``: attach cookies (kernel 5.15, commits 7adfc6c9b315 "bpf: Add bpf_get_attach_cookie()
  BPF helper to access bpf_cookie value" and 82e6b1eee6a8 "bpf: Allow to specify user-provided
  bpf_cookie for BPF perf links"): a number given with each attachment (``BPF_LINK_CREATE`` of a perf
  event, each offset of a uprobe_multi link) that the program reads back, so one program can serve
  many probes and still tell them apart.
* ``tracefs``: where tracefs is mounted, if anywhere (only needed by fallbacks and diagnostics).

``USDTKIT_NO_SEMA_REFCNT=1`` makes usdtkit behave as on a kernel without the reference counter (it then
writes semaphores itself), ``USDTKIT_NO_RINGBUF=1`` as on one without the ring buffer (events go
through the perf buffer), ``USDTKIT_NO_UPROBE_MULTI=1`` as on one without uprobe_multi links (one
perf event per site) and ``USDTKIT_NO_BPF_COOKIE=1`` as on one without attach cookies (one program per
probe); they exist to exercise those paths on new kernels.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Optional, Tuple

_UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"
_TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


@dataclass(frozen=True)
class Capabilities:
    kernel_release: str
    uprobe_pmu_type: Optional[int]
    retprobe_bit: Optional[int]
    ref_ctr_shift: Optional[int]
    tracefs: Optional[str]
    has_ringbuf: bool
    has_uprobe_multi: bool
    has_bpf_cookie: bool = False

    @property
    def has_uprobe_pmu(self) -> bool:
        return self.uprobe_pmu_type is not None

    @property
    def has_sema_refcnt(self) -> bool:
        return self.ref_ctr_shift is not None


def kernel_version(release: str) -> Tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _config_bit(field: Optional[str]) -> Optional[int]:
    """Parse a PMU format field like ``config:0`` or ``config:32-63`` into its first bit."""
    if not field:
        return None
    match = re.fullmatch(r"config:(\d+)(?:-\d+)?", field)
    return int(match.group(1)) if match else None


def find_tracefs() -> Optional[str]:
    """The mounted tracefs folder, or None."""
    for candidate in _TRACEFS_CANDIDATES:
        if os.path.exists(os.path.join(candidate, "uprobe_events")):
            return candidate
    return None


@functools.lru_cache(maxsize=None)
def detect() -> Capabilities:
    """Detect the capabilities of this kernel (cached for the process).

    The ``USDTKIT_NO_*`` switches are read here too, once: every later decision sees the same answer.
    """
    release = os.uname().release
    version = kernel_version(release)
    pmu_type = _read(os.path.join(_UPROBE_PMU, "type"))
    return Capabilities(
        kernel_release=release,
        uprobe_pmu_type=int(pmu_type) if pmu_type and pmu_type.isdigit() else None,
        retprobe_bit=_config_bit(_read(os.path.join(_UPROBE_PMU, "format", "retprobe"))),
        ref_ctr_shift=None if os.environ.get("USDTKIT_NO_SEMA_REFCNT") == "1"
        else _config_bit(_read(os.path.join(_UPROBE_PMU, "format", "ref_ctr_offset"))),
        tracefs=find_tracefs(),
        has_ringbuf=os.environ.get("USDTKIT_NO_RINGBUF") != "1" and version >= (5, 8),
        has_uprobe_multi=os.environ.get("USDTKIT_NO_UPROBE_MULTI") != "1" and version >= (6, 6),
        has_bpf_cookie=os.environ.get("USDTKIT_NO_BPF_COOKIE") != "1" and version >= (5, 15),
    )
