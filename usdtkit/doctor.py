"""Environment checks behind ``usdtkit doctor``: can this machine trace, and if not, what to fix.

Each check returns a :class:`Check` with a status (``OK``, ``WARN``: works with a fallback or limited,
``FAIL``: tracing cannot work, ``SKIP``: not run because an earlier check failed) and, unless OK, a fix
the user can apply.  The last check is a live self-test: compile a BPF program with bcc, attach a
uprobe to this very process and see it fire, which proves every other line at once.
"""
from __future__ import annotations

import gzip
import os
import platform
import re
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

from .bpf import capabilities, kernel_headers, objcache
from .errors import EnvironmentProblem

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"

REQUIRED_KCONFIG = ("CONFIG_UPROBES", "CONFIG_BPF_SYSCALL", "CONFIG_BPF_EVENTS", "CONFIG_UPROBE_EVENTS")
_CAP_PERFMON, _CAP_BPF, _CAP_SYS_ADMIN = 38, 39, 21


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def to_json(self) -> Dict[str, str]:
        return asdict(self)


def read_kernel_config(release: Optional[str] = None) -> Optional[Dict[str, str]]:
    """The running kernel's config as a dict, from ``/proc/config.gz`` or ``/boot/config-RELEASE``."""
    release = release or platform.release()
    text = None
    try:
        with gzip.open("/proc/config.gz", "rt") as handle:
            text = handle.read()
    except OSError:
        try:
            with open(f"/boot/config-{release}") as handle:
                text = handle.read()
        except OSError:
            return None
    config = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            config[key] = value
    return config


def check_kernel_config() -> Check:
    config = read_kernel_config()
    if config is None:
        return Check(
            "kernel config", WARN, "neither /proc/config.gz nor /boot/config-* is readable",
            "cannot verify CONFIG_UPROBES/BPF options; the self-test below decides",
        )
    missing = [key for key in REQUIRED_KCONFIG if config.get(key) != "y"]
    if missing:
        return Check("kernel config", FAIL, f"not enabled: {', '.join(missing)}",
                     "boot a kernel built with " + ", ".join(f"{k}=y" for k in missing))
    return Check("kernel config", OK, ", ".join(f"{k}=y" for k in REQUIRED_KCONFIG))


def effective_capabilities() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def check_privileges() -> Check:
    euid = os.geteuid()
    caps = effective_capabilities()
    has = lambda bit: bool(caps & (1 << bit))  # noqa: E731
    if euid == 0 and has(_CAP_SYS_ADMIN):
        return Check("privileges", OK, "root")
    if has(_CAP_SYS_ADMIN) or (has(_CAP_BPF) and has(_CAP_PERFMON)):
        return Check("privileges", OK, f"uid {euid} with CAP_BPF and CAP_PERFMON")
    return Check("privileges", FAIL, f"uid {euid} without CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN)",
                 "run as root (sudo usdtkit ...) or grant CAP_BPF,CAP_PERFMON")


def check_bcc() -> Check:
    try:
        import bcc  # noqa: F401  (only imported to see that it can be)
    except Exception as exc:  # any import failure means the same thing to the user
        return Check("bcc", FAIL, f"cannot import bcc: {exc}",
                     "apt-get install python3-bpfcc libbpfcc, and use /usr/bin/python3 or a venv made "
                     "with --system-site-packages")
    version = getattr(bcc, "__version__", "unknown")
    return Check("bcc", OK, f"bcc {version} from {os.path.dirname(bcc.__file__)}")


def check_headers() -> Check:
    try:
        headers = kernel_headers.locate()
    except kernel_headers.HeadersNotFound as exc:
        return Check("kernel headers", FAIL, str(exc), "apt-get install linux-headers-amd64")
    return Check("kernel headers", OK, f"{headers.kind}: {headers.path} ({headers.detail})")


def check_object_cache() -> Check:
    usable, detail = objcache.status()
    if usable or not objcache.enabled():
        return Check("object cache", OK, detail)
    return Check("object cache", WARN, detail, "attaching takes a bcc compilation (0.2 s and more) every time")


def check_uprobe_pmu() -> Check:
    caps = capabilities.detect()
    if caps.has_uprobe_pmu:
        return Check("uprobe PMU", OK, f"perf_event_open uprobes (PMU type {caps.uprobe_pmu_type})")
    return Check("uprobe PMU", FAIL, "no /sys/bus/event_source/devices/uprobe",
                 "boot a kernel with CONFIG_UPROBE_EVENTS=y (4.17 or newer)")


def check_semaphore_refcount() -> Check:
    caps = capabilities.detect()
    if caps.has_sema_refcnt:
        return Check("semaphore refcount", OK,
                     "kernel maintains USDT semaphores (uprobe format/ref_ctr_offset)")
    return Check("semaphore refcount", WARN, "kernel lacks uprobe ref_ctr_offset (before 4.20)",
                 "usdtkit writes semaphores itself and restores them on exit; a SIGKILLed tracer "
                 "leaves them set")


def check_uprobe_multi() -> Check:
    caps = capabilities.detect()
    if caps.has_uprobe_multi:
        return Check("uprobe_multi", OK, "all call sites of a probe attach and detach in one BPF link")
    return Check("uprobe_multi", WARN, f"kernel {caps.kernel_release} has no uprobe_multi links (6.6+)",
                 "usdtkit uses one perf event per call site; detaching probes with many sites is slow")


def tracefs_mounts(mountinfo: str = "/proc/self/mountinfo") -> List[str]:
    """Mount points of tracefs in this mount namespace, readable or not.

    A ``mountinfo`` line is ``ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - FSTYPE SOURCE ...``;
    the mount point escapes space, tab, newline and backslash as octal (``\\040``).
    """
    points = []
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                fields, sep, tail = line.partition(" - ")
                parts = fields.split()
                if sep and len(parts) >= 5 and tail.split()[:1] == ["tracefs"]:
                    points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[4]))
    except OSError:
        pass
    return points


def check_tracefs() -> Check:
    caps = capabilities.detect()
    if caps.tracefs:
        return Check("tracefs", OK, f"mounted at {caps.tracefs}")
    status = WARN if caps.has_uprobe_pmu else FAIL
    without = "usdtkit attaches through the perf PMU without it; -F mounts it"
    mounted = tracefs_mounts()
    if mounted:
        # tracefs is root-only (mode 0700) by default: present, but closed to this user.
        return Check("tracefs", status,
                     f"mounted at {mounted[0]} but not readable by uid {os.geteuid()} ({without})",
                     "run as root to use or inspect it (bpftrace needs it; usdtkit does not)")
    return Check("tracefs", status, f"not mounted ({without})",
                 "mount -t tracefs nodev /sys/kernel/tracing (needed by bpftrace and for inspection)")


def check_follow() -> Check:
    """The tracepoints -F reads (without mounting tracefs: the doctor only looks)."""
    from .bpf import follow  # reads tracepoint formats; loaded only for this check

    if capabilities.find_tracefs() is None:
        return Check("follow (-F)", WARN, "tracefs is not mounted (or not readable), so its tracepoints "
                     "cannot be checked", "nothing to do as root: -F mounts tracefs at /sys/kernel/tracing when "
                     "it needs it")
    try:
        fmt = follow.read_format()
    except EnvironmentProblem as exc:
        return Check("follow (-F)", WARN, str(exc).replace(" (run `usdtkit doctor` for details)", ""),
                     "-F cannot follow children on this kernel; trace them with -p CHILD")
    exits = "group_dead" if fmt.group_dead is not None else "main thread"
    return Check("follow (-F)", OK, f"task:task_newtask and sched:sched_process_exit ({exits})")


def check_native_library() -> Check:
    try:
        from . import _native

        path = _native.library_path()
        lib = _native.load_library()
        lib.providerInit  # noqa: B018  (resolving the symbol is the check)
    except Exception as exc:
        return Check("native library", FAIL, f"libstapsdt.so not usable: {exc}",
                     "rebuild the package: pip install -e . (needs gcc)")
    return Check("native library", OK, path)


def check_self_test() -> Check:
    """Compile a program, attach a uprobe to ``getpid`` in this process and see it fire."""
    from .bpf import selftest

    try:
        hits = selftest.run()
    except Exception as exc:
        return Check("self-test", FAIL, f"could not trace this process: {exc}",
                     "fix the FAIL lines above; then report a bug with this output")
    return Check("self-test", OK, f"uprobe attached through bcc and fired {hits} times")


CHECKS: List[Callable[[], Check]] = [
    check_kernel_config,
    check_privileges,
    check_bcc,
    check_headers,
    check_object_cache,
    check_uprobe_pmu,
    check_semaphore_refcount,
    check_uprobe_multi,
    check_tracefs,
    check_follow,
    check_native_library,
]


#: What tracing cannot do without (the other checks are diagnostics or have fallbacks).
TRACING_REQUIREMENTS: List[Callable[[], Check]] = [check_privileges, check_bcc, check_headers, check_uprobe_pmu]


def first_tracing_failure() -> Optional[Check]:
    """The first failing requirement of tracing, or None when tracing can work here."""
    for check in TRACING_REQUIREMENTS:
        result = check()
        if result.status == FAIL:
            return result
    return None


def run_checks(self_test: bool = True) -> List[Check]:
    """Run every check; the self-test only when nothing it depends on failed."""
    results = [check() for check in CHECKS]
    if self_test:
        if any(r.status == FAIL for r in results if r.name != "native library"):
            results.append(Check("self-test", SKIP, "skipped: fix the FAIL lines above first"))
        else:
            results.append(check_self_test())
    return results


def tracing_possible(results: List[Check]) -> bool:
    return all(r.status != FAIL for r in results) and any(r.name == "self-test" and r.status == OK for r in results)
