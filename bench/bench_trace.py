"""Tracing benchmarks of usdtkit side by side with bpftrace and bcc's tools (issue 5, "Performance").

    sudo .venv/bin/python bench/bench_trace.py            # the default run: about 4 minutes
    sudo .venv/bin/python bench/bench_trace.py --quick    # one repetition, smaller workloads: about 1 minute
    sudo .venv/bin/python bench/bench_trace.py --json     # the same, as one JSON document on stdout
    sudo .venv/bin/python bench/bench_trace.py --only attach,events --without bcc

Four sections, each a table of medians over --reps repetitions (tools interleaved inside every
repetition so they share the machine's drift), with the ratio to the reference tool:

1. ``per_hit``: ns per iteration of a tight C loop firing a USDT probe (bench/programs/sdt_bench.c,
   ``loop`` mode, which times itself with clock_gettime), on a 1-byte ``nop`` site (the <sys/sdt.h>
   default) and on a 5-byte ``nopl 0x0(%rax,%rax,1)`` site: untraced, and traced with an in-kernel count
   by bpftrace (the reference), by ``usdtkit count -p`` and by the Python API.  A run counts only if the
   tracer's count equals the number of iterations.  "BPF program ns/run" is the kernel's accounting of
   the tracer's program (BPF_ENABLE_STATS), which separates the program from the breakpoint.  (bcc
   0.26's funccount cannot count USDT probes: it passes ``str(bytes)`` as the binary path.)
2. ``attach``: seconds from starting a tracer until it reports being attached (usdtkit's ``Attached``
   line, bcc's header, bpftrace's ``BEGIN`` probe, which fires after every probe is attached), until
   the first event is printed, its peak RSS (VmHWM, read just before stopping it) and the time it
   takes to exit after SIGINT (detach), for one USDT probe and for a uprobe+uretprobe pair of one
   process.  The reference is bcc (trace-bpfcc, funclatency-bpfcc).
3. ``many_sites``: the same, system-wide (no PID), for the USDT probe of OpenJDK 17's libjvm.so with
   the most call sites, and for the probes of bench/programs/many_sites.c with --sites call sites
   each (``bench:shared``: one argument spec; ``bench:distinct``: one spec per site).
4. ``events``: events per second delivered to user space by a tracer of a probe fired as fast as
   possible (``burst`` mode), delivered + counted-lost against fired, and the target's slowdown against
   an in-kernel count of the same burst: usdtkit's Python API, ``usdtkit trace --json | wc -l`` (with
   the C reader, and with the Python path), ``usdtkit trace > /dev/null``, bcc's trace-bpfcc (the
   reference), bpftrace.

A reference tool that is missing (or left out with --without) is reported as such.  Every process
started here runs in its own process group and is stopped (SIGINT, then SIGTERM, then SIGKILL) on every
exit path.  Not a test: numbers depend on the machine and on whatever else runs on it.  Needs root.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, IO, List, Optional, Sequence, Tuple

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
PROGRAMS = os.path.join(BENCH, "programs")
BUILD = os.path.join(PROGRAMS, "build")
VENV_PY = os.path.join(REPO, ".venv", "bin", "python")
VENV_USDTKIT = os.path.join(REPO, ".venv", "bin", "usdtkit")
LIBJVM = "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so"

# What the issue measured on this machine, printed under the tables for comparison.
PREVIOUS = {
    "per_hit": "earlier on this machine: bpftrace 448-478 ns/hit (1-byte nop), 225 ns (5-byte nop), 0.6 ns untraced",
    "attach": "earlier on this machine: bcc 0.23-0.25 s (one USDT), ~0.6 s and 139 MB (uprobe+uretprobe); "
              "bpftrace 0.45 s, 92 MB",
}


def log(message: str) -> None:
    print(f"[bench_trace] {message}", file=sys.stderr, flush=True)


# ======================================================================================== processes
class Proc:
    """A process in its own process group; output lines are timestamped (time.monotonic) on arrival.

    ``stdin``: True (a pipe, see :meth:`send`), False (/dev/null) or an fd to read.  ``stdout``/``stderr``:
    ``"lines"`` (read here), ``"null"``, a path (written by the process), or an fd or file object.  Every Proc is registered so :func:`Proc.stop_all` can end it on any exit path.
    """

    registry: List["Proc"] = []
    #: CPUs for processes started without ``cpu`` (the tracers): every CPU but the targets' one.
    default_cpus: Optional[set] = None

    def __init__(self, argv: Sequence[str], name: str = "", env: Optional[Dict[str, str]] = None,
                 stdin: object = False, stdout: object = "lines", stderr: object = "lines",
                 cpu: Optional[int] = None) -> None:
        self.name = name or os.path.basename(argv[0])
        self.argv = list(argv)
        self.lines: Dict[str, List[Tuple[float, str]]] = {"stdout": [], "stderr": []}
        self._cond = threading.Condition()
        self._closed = {"stdout": False, "stderr": False}
        self._files: List[IO] = []
        self.t_exit: Optional[float] = None
        cpu_set = {cpu} if cpu is not None else Proc.default_cpus

        def preexec() -> None:
            if cpu_set:
                os.sched_setaffinity(0, cpu_set)

        self.t_start = time.monotonic()
        self.popen = subprocess.Popen(
            self.argv, env=env, start_new_session=True, preexec_fn=preexec,
            stdin=subprocess.PIPE if stdin is True else subprocess.DEVNULL if stdin is False else stdin,
            stdout=self._target("stdout", stdout), stderr=self._target("stderr", stderr))
        Proc.registry.append(self)
        for stream in ("stdout", "stderr"):
            pipe = getattr(self.popen, stream)
            if pipe is not None:
                threading.Thread(target=self._reader, args=(stream, pipe), daemon=True).start()
            else:
                self._closed[stream] = True
        threading.Thread(target=self._waiter, daemon=True).start()

    def _target(self, stream: str, how: object) -> object:
        if how == "lines":
            return subprocess.PIPE
        if how == "null":
            return subprocess.DEVNULL
        if isinstance(how, str):
            handle = open(how, "wb")
            self._files.append(handle)
            return handle
        return how

    def _reader(self, stream: str, pipe: IO[bytes]) -> None:
        for raw in pipe:
            now = time.monotonic()
            with self._cond:
                self.lines[stream].append((now, raw.decode(errors="replace").rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._closed[stream] = True
            self._cond.notify_all()

    def _waiter(self) -> None:
        self.popen.wait()
        with self._cond:
            self.t_exit = time.monotonic()
            self._cond.notify_all()
        for handle in self._files:
            handle.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.t_exit is None

    def wait_line(self, stream: str, pattern: str, timeout: float) -> Optional[Tuple[float, str]]:
        """The first line of ``stream`` matching ``pattern`` (waiting up to ``timeout``), or None."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                lines = self.lines[stream]
                for entry in lines[seen:]:
                    if regex.search(entry[1]):
                        return entry
                seen = len(lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._closed[stream] and self.t_exit is not None):
                    return None
                self._cond.wait(min(remaining, 0.2))

    def text(self, stream: str) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines[stream])

    def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.t_exit is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.2))
        # let the readers collect what the process wrote last
        end = time.monotonic() + 2.0
        with self._cond:
            while not all(self._closed.values()) and time.monotonic() < end:
                self._cond.wait(0.05)
        return True

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text.encode())
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            try:
                self.popen.stdin.close()
            except OSError:
                pass

    def vm_hwm_kb(self) -> Optional[int]:
        """Peak resident set size of the process so far (VmHWM), in kB."""
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, sig: int = signal.SIGINT, grace: float = 10.0, resend: float = 2.0) -> float:
        """Stop the process group: ``sig`` (re-sent every ``resend`` s: bpftrace 0.17 can miss a SIGINT
        that arrives right after its BEGIN probe), then SIGTERM, then SIGKILL.  Returns the seconds from
        the first signal to the exit."""
        self.close_stdin()
        if not self.alive():
            return 0.0
        started = time.monotonic()
        deadline = started + grace
        while self.alive() and time.monotonic() < deadline:
            self.signal_group(sig)
            self.wait_exit(min(resend, max(deadline - time.monotonic(), 0.01)))
        for escalate, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 600.0)):
            if not self.alive():
                break
            self.signal_group(escalate)
            self.wait_exit(wait)
        self.wait_exit(1.0)
        return (self.t_exit or time.monotonic()) - started

    @classmethod
    def stop_all(cls) -> None:
        for proc in cls.registry:
            if proc.alive():
                proc.stop(signal.SIGINT, grace=3.0)
        cls.registry = [p for p in cls.registry if p.alive()]


def perf_event_fds(pid: int) -> Tuple[int, int]:
    """How many perf_event and eventpoll fds ``pid`` holds (attached uprobes, an open ring buffer)."""
    perf = epoll = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            perf += link == "anon_inode:[perf_event]"
            epoll += link == "anon_inode:[eventpoll]"
    except OSError:
        pass
    return perf, epoll


_BPF_ENABLE_STATS = 32       # bpf(2) command
_BPF_STATS_RUN_TIME = 0
_NR_BPF = {"x86_64": 321, "aarch64": 280}


def enable_bpf_run_stats() -> Optional[int]:
    """Turn on the kernel's per-program run time accounting for as long as the returned fd is open.

    BPF_ENABLE_STATS is reference counted (unlike writing kernel.bpf_stats_enabled), so this does not
    disturb anyone else on the machine.  None when the kernel refuses."""
    import ctypes

    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    attr = (ctypes.c_uint32 * 2)(_BPF_STATS_RUN_TIME, 0)
    fd = libc.syscall(nr, _BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    return int(fd) if fd >= 0 else None


def bpf_prog_run_stats(pid: int) -> Optional[Tuple[int, int]]:
    """``(run_cnt, run_time_ns)`` of the busiest BPF program ``pid`` holds (from /proc/PID/fdinfo)."""
    best: Optional[Tuple[int, int]] = None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                fields = dict(line.split(":", 1) for line in info if ":" in line)
            count, run_ns = int(fields.get("run_cnt", 0)), int(fields.get("run_time_ns", 0))
        except (OSError, ValueError):
            continue
        if best is None or count > best[0]:
            best = (count, run_ns)
    return best


# ======================================================================================== results
@dataclass
class Row:
    """One tool on one case: samples of its main metric plus side measurements."""

    section: str
    case: str
    tool: str
    unit: str
    reference: bool = False
    samples: List[float] = field(default_factory=list)
    extra: Dict[str, List[float]] = field(default_factory=dict)
    checks: List[str] = field(default_factory=list)   # verification outcome of every run
    note: str = ""

    def add_extra(self, name: str, value: Optional[float]) -> None:
        if value is not None:
            self.extra.setdefault(name, []).append(value)

    def median(self, name: Optional[str] = None) -> Optional[float]:
        values = self.samples if name is None else self.extra.get(name, [])
        return statistics.median(values) if values else None

    def to_json(self) -> dict:
        return {"section": self.section, "case": self.case, "tool": self.tool, "unit": self.unit,
                "reference": self.reference, "samples": self.samples, "median": self.median(),
                "extra": {k: {"samples": v, "median": statistics.median(v)} for k, v in self.extra.items() if v},
                "checks": self.checks, "note": self.note}


class Results:
    def __init__(self) -> None:
        self.rows: List[Row] = []
        self.findings: List[str] = []

    def row(self, section: str, case: str, tool: str, unit: str, reference: bool = False) -> Row:
        for row in self.rows:
            if (row.section, row.case, row.tool) == (section, case, tool):
                return row
        row = Row(section, case, tool, unit, reference)
        self.rows.append(row)
        return row

    def reference(self, section: str, case: str) -> Optional[Row]:
        for row in self.rows:
            if row.section == section and row.case == case and row.reference and row.samples:
                return row
        return None


# ======================================================================================== environment
@dataclass
class Env:
    usdtkit: List[str]            # argv prefix running the usdtkit CLI
    worker: List[str]             # argv prefix running this script as an API worker (venv Python)
    usdtkit_env: Dict[str, str]
    bcc_env: Dict[str, str]       # environment for bcc's tools (kernel headers)
    bpftrace: Optional[str]
    bcc_trace: Optional[str]
    bcc_funclatency: Optional[str]
    cpu: Optional[int]            # CPU the targets are pinned to (the tracers get the others)
    versions: Dict[str, str]
    nop1: str = ""
    nop5: str = ""
    many: str = ""


def _tool(*names: str) -> Optional[str]:
    for name in names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def _version(argv: List[str], env: Optional[Dict[str, str]] = None) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
        return (out.stdout.strip() or out.stderr.strip()).splitlines()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def discover() -> Env:
    python = VENV_PY if os.access(VENV_PY, os.X_OK) else sys.executable
    usdtkit_env = dict(os.environ)
    usdtkit_env["PYTHONPATH"] = REPO + (os.pathsep + usdtkit_env["PYTHONPATH"] if usdtkit_env.get("PYTHONPATH") else "")
    usdtkit_env.pop("PYTHONDONTWRITEBYTECODE", None)
    if os.access(VENV_USDTKIT, os.X_OK):
        usdtkit = [VENV_USDTKIT]
    else:
        usdtkit = [python, "-m", "usdtkit.cli.main"]
    worker = [python, os.path.abspath(__file__), "--worker"]
    # bcc's tools compile against kernel headers; when the running kernel has none, give them the
    # overlay usdtkit itself uses (what `usdtkit doctor` reports), so both compile the same way.
    bcc_env = dict(os.environ)
    if not os.environ.get("BCC_KERNEL_SOURCE") and not os.path.isdir(f"/lib/modules/{platform.release()}/build"):
        probe = subprocess.run(
            [python, "-c", "from usdtkit.bpf import kernel_headers as k; h = k.locate(); "
                           "print(h.source_override or '')"],
            capture_output=True, text=True, env=usdtkit_env, timeout=60)
        tree = probe.stdout.strip()
        if tree:
            bcc_env["BCC_KERNEL_SOURCE"] = tree
    cpus = sorted(os.sched_getaffinity(0))
    env = Env(
        usdtkit=usdtkit, worker=worker, usdtkit_env=usdtkit_env, bcc_env=bcc_env,
        bpftrace=_tool("bpftrace"),
        bcc_trace=_tool("trace-bpfcc", "/usr/sbin/trace-bpfcc", "/usr/share/bcc/tools/trace"),
        bcc_funclatency=_tool("funclatency-bpfcc", "/usr/sbin/funclatency-bpfcc", "/usr/share/bcc/tools/funclatency"),
        cpu=cpus[-1] if len(cpus) > 1 else None,
        versions={},
    )
    if env.cpu is not None:
        Proc.default_cpus = set(cpus) - {env.cpu}
    env.versions = {
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "usdtkit": _version(usdtkit + ["--version"], usdtkit_env),
        "bpftrace": _version([env.bpftrace, "--version"]) if env.bpftrace else "missing",
        "bcc": _version(["/usr/bin/python3", "-c", "import bcc; print(bcc.__version__)"]),
        "usdtkit command": " ".join(usdtkit),
        "bcc kernel headers": bcc_env.get("BCC_KERNEL_SOURCE", "running kernel's"),
    }
    return env


def build_programs(env: Env, sites: int) -> None:
    """Compile the benchmark targets into bench/programs/build (only when a source is newer)."""
    gcc = _tool("gcc", "cc")
    if gcc is None:
        raise SystemExit("bench_trace: gcc is needed to build bench/programs")
    os.makedirs(BUILD, exist_ok=True)
    src = os.path.join(PROGRAMS, "sdt_bench.c")
    many_src = os.path.join(PROGRAMS, "many_sites.c")
    jobs = [("sdt_bench_nop1", src, []), ("sdt_bench_nop5", src, ["-DSDT_NOP5"]),
            (f"many_sites_{sites}", many_src, [f"-DSITES={sites}"])]
    for name, source, flags in jobs:
        out = os.path.join(BUILD, name)
        if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(source):
            subprocess.run([gcc, "-O2", "-g", "-Wall", *flags, "-o", out, source], check=True)
    env.nop1 = os.path.join(BUILD, "sdt_bench_nop1")
    env.nop5 = os.path.join(BUILD, "sdt_bench_nop5")
    env.many = os.path.join(BUILD, f"many_sites_{sites}")


def usdt_notes(path: str) -> Dict[Tuple[str, str], int]:
    """``(provider, name) -> number of call sites`` from the ELF notes of ``path`` (readelf -n)."""
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True, timeout=120).stdout
    sites: Dict[Tuple[str, str], int] = {}
    provider = None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Provider:"):
            provider = line.split(None, 1)[1]
        elif line.startswith("Name:") and provider is not None:
            key = (provider, line.split(None, 1)[1])
            sites[key] = sites.get(key, 0) + 1
            provider = None
    return sites


# ======================================================================================== targets
def start_target(env: Env, binary: str, *args: str) -> Proc:
    target = Proc([binary, *args], name=os.path.basename(binary), stdin=True, cpu=env.cpu)
    if target.wait_line("stdout", r"^ready pid=", 10) is None:
        target.stop(signal.SIGKILL)
        raise RuntimeError(f"{binary} {' '.join(args)} did not start: {target.text('stderr')}")
    return target


def wait_attached(proc: Proc, stream: str, pattern: str, timeout: float) -> Optional[float]:
    """Seconds from the tracer's start to its attach line, or None (the reason goes to the log)."""
    hit = proc.wait_line(stream, pattern, timeout)
    if hit is None:
        reason = (proc.text("stderr") or proc.text("stdout")).strip().splitlines()[-3:]
        log(f"  {proc.name}: no attach line /{pattern}/ within {timeout:.0f}s: {' | '.join(reason)}")
        return None
    return hit[0] - proc.t_start


def _last_error(proc: Proc) -> str:
    lines = [l for l in (proc.text("stderr") + "\n" + proc.text("stdout")).splitlines()
             if l.strip() and "RLIMIT_MEMLOCK" not in l]
    return lines[-1][:160] if lines else f"exit status {proc.popen.returncode}"


# ======================================================================================== 1. per hit
BPFTRACE_READY = r'BEGIN { printf("bench-ready\n"); }'


def per_hit(env: Env, results: Results, reps: int, n: int) -> None:
    log(f"per-hit cost: {n} iterations x {reps} repetitions")
    stats_fd = enable_bpf_run_stats()
    if stats_fd is None:
        results.findings.append("BPF_ENABLE_STATS refused: no BPF program run time column")
    try:
        _per_hit(env, results, reps, n)
    finally:
        if stats_fd is not None:
            os.close(stats_fd)


def _per_hit(env: Env, results: Results, reps: int, n: int) -> None:
    sites = [("1-byte nop site", env.nop1), ("5-byte nop site", env.nop5)]
    tools: List[Tuple[str, Optional[Callable]]] = [
        ("untraced", None),
        ("bpftrace @c = count()", _hit_bpftrace if env.bpftrace else None),
        ("usdtkit count -p (CLI)", _hit_usdtkit_cli),
        ("usdtkit API events=False, count_by=[]", _hit_usdtkit_api),
    ]
    for case, binary in sites:
        for tool, _ in tools:
            row = results.row("per_hit", case, tool, "ns/hit", reference=tool.startswith("bpftrace"))
            if tool.startswith("bpftrace") and not env.bpftrace:
                row.note = "bpftrace not available (not installed, or --without)"
    for rep in range(reps):
        for case, binary in sites:
            order = tools[rep % len(tools):] + tools[:rep % len(tools)]
            for tool, runner in order:
                if tool != "untraced" and runner is None:
                    continue
                row = results.row("per_hit", case, tool, "ns/hit")
                try:
                    _one_hit_run(env, row, binary, n, runner)
                finally:
                    Proc.stop_all()


def _one_hit_run(env: Env, row: Row, binary: str, n: int, runner: Optional[Callable]) -> None:
    target = start_target(env, binary, "loop", str(n))
    tracer: Optional[Proc] = None
    count_of: Optional[Callable[[Proc], Optional[int]]] = None
    if runner is not None:
        tracer, count_of = runner(env, binary, target.pid)
        if tracer is None:
            row.checks.append("tracer did not attach")
            target.stop(signal.SIGKILL)
            return
    target.send("go\n")
    deadline = time.monotonic() + 120 + n * 2e-6
    prog_stats: Optional[Tuple[int, int]] = None
    while True:   # sample the tracer's BPF program counters while it is alive (it exits with the target)
        done = target.wait_line("stdout", r"^loop n=", 0.1)
        if done is not None or time.monotonic() > deadline or not target.alive():
            break
        if tracer is not None:
            prog_stats = bpf_prog_run_stats(tracer.pid) or prog_stats
    if done is None:
        row.checks.append("target did not finish")
        return
    ns = float(re.search(r"ns_per_iter=([\d.]+)", done[1]).group(1))
    target.wait_exit(10)
    if tracer is None:
        row.samples.append(ns)
        row.checks.append("ok")
        return
    if not tracer.wait_exit(20):   # every tracer here ends with its target; make it if it did not
        tracer.stop(signal.SIGINT)
    counted = count_of(tracer) if count_of else None
    if counted == n:
        row.samples.append(ns)
        if prog_stats and prog_stats[0]:
            row.add_extra("BPF program ns/run", prog_stats[1] / prog_stats[0])
        row.checks.append("ok")
    else:
        row.checks.append(f"count {counted} != {n} (loop at {ns:.1f} ns/iter): {_last_error(tracer)}")
        log(f"  {row.tool}: count {counted} != {n} with the loop at {ns:.1f} ns/iter; sample dropped")


def _hit_bpftrace(env: Env, binary: str, pid: int) -> Tuple[Optional[Proc], Callable]:
    program = f"usdt:{binary}:bench:hit {{ @c = count(); }} {BPFTRACE_READY}"
    tracer = Proc([env.bpftrace, "-p", str(pid), "-e", program], name="bpftrace")
    if wait_attached(tracer, "stdout", "bench-ready", 60) is None:
        return None, None

    def count(proc: Proc) -> Optional[int]:
        found = re.search(r"^@c: (\d+)", proc.text("stdout"), re.M)
        return int(found.group(1)) if found else None

    return tracer, count


def _hit_usdtkit_cli(env: Env, binary: str, pid: int) -> Tuple[Optional[Proc], Callable]:
    tracer = Proc(env.usdtkit + ["count", "-p", str(pid), f"usdt:{binary}:bench:hit"], name="usdtkit",
                  env=env.usdtkit_env)
    if wait_attached(tracer, "stderr", r"^Attached ", 60) is None:
        return None, None

    def count(proc: Proc) -> Optional[int]:
        found = re.search(r"^bench:hit\s+(\d+)\s*$", proc.text("stdout"), re.M)
        return int(found.group(1)) if found else None

    return tracer, count


def _hit_usdtkit_api(env: Env, binary: str, pid: int) -> Tuple[Optional[Proc], Callable]:
    tracer = Proc(env.worker + ["count", str(pid), f"usdt:{binary}:bench:hit"], name="usdtkit-api",
                  env=env.usdtkit_env)
    if wait_attached(tracer, "stdout", r"^attached", 60) is None:
        return None, None

    def count(proc: Proc) -> Optional[int]:
        found = proc.wait_line("stdout", r"^\{", 5)
        return json.loads(found[1]).get("count") if found else None

    return tracer, count


# ======================================================================================== 2. attach
@dataclass
class AttachCase:
    tool: str
    argv: List[str]
    env: Dict[str, str]
    ready: Tuple[str, str]                        # (stream, regex) of the "attached" line
    first: Optional[Tuple[str, str]] = None       # (stream, regex) of the first event line
    reference: bool = False
    also: Optional[Tuple[str, str, str]] = None   # (name, stream, regex) of another line to time
    sites: Optional[int] = None                   # call sites it must report attaching (usdtkit, bpftrace)


def run_attach_case(results: Results, section: str, case: str, spec: AttachCase, timeout: float = 60,
                    stop_grace: float = 30) -> None:
    row = results.row(section, case, spec.tool, "s", reference=spec.reference)
    proc = Proc(spec.argv, name=spec.tool, env=spec.env)
    try:
        ready = wait_attached(proc, spec.ready[0], spec.ready[1], timeout)
        if ready is None:
            row.checks.append(f"not attached: {_last_error(proc)}")
            return
        row.samples.append(ready)
        if spec.also:
            hit = proc.wait_line(spec.also[1], spec.also[2], 1)
            row.add_extra(spec.also[0], hit[0] - proc.t_start if hit else None)
        if spec.first:
            first = proc.wait_line(spec.first[0], spec.first[1], 5)
            row.add_extra("first event (s)", first[0] - proc.t_start if first else None)
        else:
            time.sleep(0.3)   # let it settle into its loop before reading the peak RSS
        hwm = proc.vm_hwm_kb()
        row.add_extra("peak RSS (MB)", hwm / 1024 if hwm else None)
        row.add_extra("stop (s)", proc.stop(signal.SIGINT, grace=stop_grace))
        row.checks.append(_check_sites(proc, spec.sites))
    finally:
        if proc.alive():
            proc.stop(signal.SIGKILL)


def _check_sites(proc: Proc, expected: Optional[int]) -> str:
    """"ok", or why the number of sites the tool says it attached is not the expected one."""
    if expected is None:
        return "ok"
    text = proc.text("stderr") + "\n" + proc.text("stdout")
    usdtkit = re.search(r"^Attached (\d+) site", text, re.M)
    bpftrace = re.search(r"^Attaching (\d+) probe", text, re.M)
    said = int(usdtkit.group(1)) if usdtkit else int(bpftrace.group(1)) - 1 if bpftrace else None  # - BEGIN
    if said is None or said == expected:
        return "ok"
    return f"attached {said} sites, expected {expected}"


def attach(env: Env, results: Results, reps: int) -> None:
    log(f"time to attach, one process: {reps} repetitions")
    target = start_target(env, env.nop1, "idle")
    pid, binary = str(target.pid), env.nop1
    usdt_case, pair_case = "one USDT probe (-p PID)", "uprobe+uretprobe pair (-p PID)"
    # Warm: the object cache holds the program (filled by an untimed run first); no cache: compiled by
    # bcc every time, what a probe shape never traced before costs.
    no_cache = dict(env.usdtkit_env, USDTKIT_NO_OBJCACHE="1")
    cases: List[Tuple[str, AttachCase]] = []
    for label, tool_env in (("warm cache", env.usdtkit_env), ("no cache", no_cache)):
        cases += [
            (usdt_case, AttachCase(f"usdtkit trace ({label})",
                                   env.usdtkit + ["trace", "-p", pid, f"usdt:{binary}:bench:tick"],
                                   tool_env, ("stderr", r"^Attached "), ("stdout", r"bench:tick"), sites=1)),
            (usdt_case, AttachCase(f"usdtkit count ({label})",
                                   env.usdtkit + ["count", "-p", pid, f"usdt:{binary}:bench:tick"],
                                   tool_env, ("stderr", r"^Attached "), sites=1)),
            (pair_case, AttachCase(f"usdtkit latency ({label})",
                                   env.usdtkit + ["latency", "-p", pid, f"uprobe:{binary}:bench_func"],
                                   tool_env, ("stderr", r"^Attached "), sites=2)),
        ]
    for _case, spec in cases[:3]:
        run_attach_case(Results(), "attach", "warm-up", spec)
    if env.bcc_trace:
        cases.append((usdt_case, AttachCase(
            "bcc trace-bpfcc", [env.bcc_trace, "-p", pid, f'u:{binary}:tick "%d", arg1'], env.bcc_env,
            ("stdout", r"^PID\s+TID"), ("stdout", r"\btick\b"), reference=True)))
    else:
        results.row("attach", usdt_case, "bcc trace-bpfcc", "s", True).note = "trace-bpfcc not available (not installed, or --without)"
    if env.bcc_funclatency:
        cases.append((pair_case, AttachCase(
            "bcc funclatency-bpfcc", [env.bcc_funclatency, "-p", pid, f"{binary}:bench_func"], env.bcc_env,
            ("stdout", r"^Tracing \d+ functions"), reference=True)))
    else:
        results.row("attach", pair_case, "bcc funclatency-bpfcc", "s", True).note = "funclatency-bpfcc not available (not installed, or --without)"
    if env.bpftrace:
        cases.append((usdt_case, AttachCase(
            "bpftrace", [env.bpftrace, "-p", pid, "-e",
                         f'usdt:{binary}:bench:tick {{ printf("tick %d\\n", arg0); }} {BPFTRACE_READY}'],
            dict(os.environ), ("stdout", "bench-ready"), ("stdout", r"^tick \d+"),
            also=("'Attaching' line (s)", "stdout", r"^Attaching \d+ probe"))))
        cases.append((pair_case, AttachCase(
            "bpftrace", [env.bpftrace, "-p", pid, "-e",
                         f"uprobe:{binary}:bench_func {{ @start[tid] = nsecs; }} "
                         f"uretprobe:{binary}:bench_func /@start[tid]/ "
                         f"{{ @ns = hist(nsecs - @start[tid]); delete(@start[tid]); }} {BPFTRACE_READY}"],
            dict(os.environ), ("stdout", "bench-ready"),
            also=("'Attaching' line (s)", "stdout", r"^Attaching \d+ probe"))))
    else:
        for case in (usdt_case, pair_case):
            results.row("attach", case, "bpftrace", "s").note = "bpftrace not available (not installed, or --without)"
    for case, spec in cases:   # rows in a stable order
        results.row("attach", case, spec.tool, "s", spec.reference)
    try:
        for rep in range(reps):
            order = cases[rep % len(cases):] + cases[:rep % len(cases)]
            for case, spec in order:
                if not target.alive():
                    raise RuntimeError("the idle target died")
                run_attach_case(results, "attach", case, spec)
    finally:
        target.stop(signal.SIGKILL)
        Proc.stop_all()


def many_sites(env: Env, results: Results, reps: int, sites: int, quick: bool) -> None:
    """System-wide attach to probes with many call sites: libjvm's busiest probe, many_sites.c's."""
    cases: List[Tuple[str, AttachCase, int]] = []   # (case, spec, repetitions)
    max_probes = dict(os.environ, BPFTRACE_MAX_PROBES=str(4 * sites + 64))

    def add(case: str, binary: str, provider: str, name: str, count: int, tools: Sequence[str], times: int) -> None:
        spec_usdt = f"usdt:{binary}:{provider}:{name}"
        if "usdtkit" in tools:
            cases.append((case, AttachCase("usdtkit count", env.usdtkit + ["count", spec_usdt], env.usdtkit_env,
                                           ("stderr", r"^Attached "), sites=count), times))
        if "bpftrace" in tools:
            if env.bpftrace:
                cases.append((case, AttachCase(
                    "bpftrace", [env.bpftrace, "-e", f"{spec_usdt} {{ @c = count(); }} {BPFTRACE_READY}"],
                    max_probes, ("stdout", "bench-ready"), reference=True, sites=count,
                    also=("'Attaching' line (s)", "stdout", r"^Attaching \d+ probe")), times))
            else:
                results.row("many_sites", case, "bpftrace", "s", True).note = "bpftrace not available (not installed, or --without)"
        if "bcc" in tools:
            if env.bcc_trace:
                cases.append((case, AttachCase("bcc trace-bpfcc", [env.bcc_trace, f"u:{binary}:{name}"], env.bcc_env,
                                               ("stdout", r"^PID\s+TID")), times))
            else:
                results.row("many_sites", case, "bcc trace-bpfcc", "s").note = "trace-bpfcc not available (not installed, or --without)"

    if os.path.exists(LIBJVM):
        notes = usdt_notes(LIBJVM)
        (provider, name), count = max(notes.items(), key=lambda kv: (kv[1], kv[0][0] == "hotspot"))
        hotspot = max(((k, v) for k, v in notes.items() if k[0] == "hotspot"), key=lambda kv: kv[1], default=None)
        results.findings.append(
            f"OpenJDK 17's libjvm.so has {len(notes)} USDT probes and {sum(notes.values())} sites; the "
            f"probe with the most call sites is {provider}:{name} with {count}"
            + (f" (in provider hotspot: {hotspot[0][1]} with {hotspot[1]})" if hotspot else "")
            + ": no probe there has hundreds of sites, so many_sites.c provides them")
        add(f"libjvm.so {provider}:{name} ({count} sites, system-wide)", LIBJVM, provider, name, count,
            ("usdtkit", "bpftrace", "bcc"), reps)
    else:
        results.findings.append(f"{LIBJVM} not found: the libjvm case is skipped")
    # Each many-site run pays a long detach (see the stop column), so these run once.  bench:distinct
    # only changes usdtkit's code generation (one function per argument spec): the other tools attach
    # one program per site anyway.
    add(f"many_sites bench:shared ({sites} sites, system-wide)", env.many, "bench", "shared", sites,
        ("usdtkit", "bpftrace") if quick else ("usdtkit", "bpftrace", "bcc"), 1)
    add(f"many_sites bench:distinct ({sites} sites, system-wide)", env.many, "bench", "distinct", sites,
        ("usdtkit",), 1)
    for case, spec, _ in cases:
        results.row("many_sites", case, spec.tool, "s", spec.reference)
    log(f"time to attach, system-wide, many call sites ({len(cases)} tool/probe pairs; detaching "
        f"{sites} sites takes a while)")
    try:
        for rep in range(max(reps, 1)):
            for case, spec, wanted in cases:
                if rep < wanted:
                    run_attach_case(results, "many_sites", case, spec, timeout=300, stop_grace=30 + sites * 1.0)
    finally:
        Proc.stop_all()


# ======================================================================================== 4. events
def events(env: Env, results: Results, reps: int, m: int, tmp: str) -> None:
    log(f"events per second: {m} events x {reps} repetitions")
    binary = env.nop5
    case = f"{m} events, 5-byte nop site, -p PID"
    tools: List[Tuple[str, Callable, bool]] = [
        ("usdtkit API (on_event callback)", _ev_usdtkit_api, False),
        ("usdtkit trace --json | wc -l", _ev_usdtkit_json, False),
        ("usdtkit trace --json, Python path", _ev_usdtkit_json_python, False),
        ("usdtkit trace > /dev/null", _ev_usdtkit_text, False),
    ]
    if env.bcc_trace:
        tools.append(("bcc trace-bpfcc > file", _ev_bcc_trace, True))
    else:
        results.row("events", case, "bcc trace-bpfcc > file", "events/s", True).note = "trace-bpfcc not available (not installed, or --without)"
    if env.bpftrace:
        tools.append(("bpftrace printf > file", _ev_bpftrace, False))
    else:
        results.row("events", case, "bpftrace printf > file", "events/s").note = "bpftrace not available (not installed, or --without)"
    counted = results.row("events", case, "in-kernel count (usdtkit count), fired/s", "events/s")
    for tool, _, ref in tools:
        results.row("events", case, tool, "events/s", ref)
    alone = f"{m} records already in ring buffer memory (the C reader alone, no producer)"
    for rep in range(reps):
        _reader_alone(env, results, alone, m)
        order = tools[rep % len(tools):] + tools[:rep % len(tools)]
        try:
            count_rate = _counted_burst(env, counted, binary, m)
        finally:
            Proc.stop_all()
        for tool, runner, _ in order:
            row = results.row("events", case, tool, "events/s")
            try:
                _one_event_run(env, row, binary, m, runner, tmp, count_rate)
            finally:
                Proc.stop_all()


def _reader_alone(env: Env, results: Results, case: str, m: int) -> None:
    rows = {"events": results.row("events", case, "usdtkit API path (kept events + on_event)", "events/s"),
            "json": results.row("events", case, "usdtkit trace --json path (to /dev/null)", "events/s")}
    proc = Proc(env.worker + ["reader", str(m)], name="usdtkit-reader", env=env.usdtkit_env)
    found = proc.wait_line("stdout", r"^\{", 120)
    rates = json.loads(found[1]) if found else {}
    for name, row in rows.items():
        if name in rates:
            row.samples.append(rates[name])
            row.checks.append("ok")
        else:
            row.note = "the C extension is not built" if found else f"no result: {_last_error(proc)}"
    Proc.stop_all()


def _counted_burst(env: Env, row: Row, binary: str, m: int) -> Optional[float]:
    """The target's firing rate while its probe is only counted in the kernel (nothing read per
    event): what a tracer's slowdown of the target is measured against."""
    target = start_target(env, binary, "burst", str(m))
    tracer = Proc(env.usdtkit + ["count", "-p", str(target.pid), f"usdt:{binary}:bench:event"], name="usdtkit",
                  env=env.usdtkit_env)
    if wait_attached(tracer, "stderr", r"^Attached ", 60) is None:
        row.checks.append("usdtkit count did not attach")
        return None
    target.send("go\n")
    done = target.wait_line("stdout", r"^burst n=", 300)
    if done is None:
        row.checks.append("target did not finish")
        return None
    rate = m / (int(re.search(r"elapsed_ns=(\d+)", done[1]).group(1)) / 1e9)
    tracer.wait_exit(30)
    found = re.search(r"^bench:event\s+(\d+)\s*$", tracer.text("stdout"), re.M)
    counted = int(found.group(1)) if found else None
    row.samples.append(rate)
    row.add_extra("delivered %", 100.0 * (counted or 0) / m)
    row.checks.append("ok" if counted == m else f"counted {counted} != fired {m}")
    return rate


@dataclass
class EventOutcome:
    delivered: Optional[int]
    lost: Optional[int]          # None: the tool does not say
    t_end: Optional[float]       # monotonic time the last event was delivered / the tracer finished
    note: str = ""


def _one_event_run(env: Env, row: Row, binary: str, m: int, runner: Callable, tmp: str,
                   count_rate: Optional[float] = None) -> None:
    target = start_target(env, binary, "burst", str(m))
    started = runner(env, binary, target.pid, tmp)
    if started is None:
        row.checks.append("tracer did not attach")
        return
    finish = started
    t_go = time.monotonic()
    target.send("go\n")
    done = target.wait_line("stdout", r"^burst n=", 300)
    if done is None:
        row.checks.append("target did not finish")
        return
    fire_ns = int(re.search(r"elapsed_ns=(\d+)", done[1]).group(1))
    target.wait_exit(10)
    outcome: EventOutcome = finish(target)
    if outcome.delivered is None or outcome.t_end is None:
        row.checks.append(f"no result: {outcome.note}")
        return
    seconds = max(outcome.t_end - t_go, 1e-9)
    row.samples.append(outcome.delivered / seconds)
    row.add_extra("delivered", outcome.delivered)
    row.add_extra("delivered %", 100.0 * outcome.delivered / m)
    row.add_extra("fired/s while traced", m / (fire_ns / 1e9))
    if count_rate:
        row.add_extra("target slowdown vs count", count_rate / (m / (fire_ns / 1e9)))
    row.add_extra("seconds to deliver", seconds)
    if outcome.lost is not None:
        row.add_extra("lost (counted)", outcome.lost)
        accounted = outcome.delivered + outcome.lost
        row.checks.append("ok" if accounted == m else f"delivered+lost {accounted} != fired {m}")
    else:
        row.add_extra("missing, not reported", m - outcome.delivered)
        row.checks.append("losses not reported" if outcome.delivered != m else "ok (nothing lost)")


def _ev_usdtkit_api(env: Env, binary: str, pid: int, tmp: str) -> Optional[Callable]:
    tracer = Proc(env.worker + ["events", str(pid), f"usdt:{binary}:bench:event"], name="usdtkit-api",
                  env=env.usdtkit_env)
    if wait_attached(tracer, "stdout", r"^attached", 60) is None:
        return None

    def finish(target: Proc) -> EventOutcome:
        found = tracer.wait_line("stdout", r"^\{", 300)
        if found is None:
            return EventOutcome(None, None, None, _last_error(tracer))
        doc = json.loads(found[1])
        note = f"dropped from session.events: {doc['dropped_by_user_queue']}" if doc["dropped_by_user_queue"] else ""
        return EventOutcome(doc["delivered"], doc["lost_events"], doc["t_end"], note)

    return finish


def _ev_usdtkit_json(env: Env, binary: str, pid: int, tmp: str) -> Optional[Callable]:
    read_end, write_end = os.pipe()
    try:
        counter = Proc(["wc", "-l"], name="wc", stdin=read_end, stdout="lines", stderr="null")
        tracer = Proc(env.usdtkit + ["trace", "--json", "-p", str(pid), f"usdt:{binary}:bench:event"],
                      name="usdtkit", env=env.usdtkit_env, stdout=write_end, stderr="lines")
    finally:
        os.close(read_end)
        os.close(write_end)
    if wait_attached(tracer, "stderr", r"^Attached ", 60) is None:
        return None

    def finish(target: Proc) -> EventOutcome:
        if not tracer.wait_exit(300):
            return EventOutcome(None, None, None, "usdtkit did not exit after its target")
        counter.wait_exit(30)
        found = counter.wait_line("stdout", r"^\s*\d+", 1)
        delivered = int(found[1].split()[0]) if found else None
        lost = re.search(r"(\d+) events lost", tracer.text("stderr"))  # losses are reported on stderr
        return EventOutcome(delivered, int(lost.group(1)) if lost else 0, tracer.t_exit, "")

    return finish


def _ev_usdtkit_json_python(env: Env, binary: str, pid: int, tmp: str) -> Optional[Callable]:
    """``trace --json`` decoding and formatting in Python, as where the C extension is not built."""
    return _ev_usdtkit_json(replace(env, usdtkit_env=dict(env.usdtkit_env, USDTKIT_NO_NATIVE_EVENTS="1")),
                            binary, pid, tmp)


def _ev_usdtkit_text(env: Env, binary: str, pid: int, tmp: str) -> Optional[Callable]:
    tracer = Proc(env.usdtkit + ["trace", "-p", str(pid), f"usdt:{binary}:bench:event"], name="usdtkit",
                  env=env.usdtkit_env, stdout="null", stderr="lines")
    if wait_attached(tracer, "stderr", r"^Attached ", 60) is None:
        return None

    def finish(target: Proc) -> EventOutcome:
        if not tracer.wait_exit(300):
            return EventOutcome(None, None, None, "usdtkit did not exit after its target")
        err = tracer.text("stderr")
        events_line = re.search(r"^(\d+) events \(", err, re.M)
        lost = re.search(r"(\d+) events lost", err)
        delivered = int(events_line.group(1)) if events_line else None
        return EventOutcome(delivered, int(lost.group(1)) if lost else (0 if delivered is not None else None),
                            tracer.t_exit, "" if events_line else _last_error(tracer))

    return finish


def _settle_output(path: str, quiet: float = 1.0, limit: float = 300) -> float:
    """Wait until ``path`` stops growing for ``quiet`` seconds; return when it last grew."""
    last_size, last_change = -1, time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        now = time.monotonic()
        if size != last_size:
            last_size, last_change = size, now
        elif now - last_change >= quiet:
            break
        time.sleep(0.02)
    return last_change


def _count_lines(path: str, pattern: bytes) -> int:
    regex = re.compile(pattern)
    with open(path, "rb") as handle:
        return sum(1 for line in handle if regex.match(line))


def _ev_bcc_trace(env: Env, binary: str, pid: int, tmp: str) -> Optional[Callable]:
    out = os.path.join(tmp, "bcc_trace.out")
    tracer = Proc([env.bcc_trace, "-p", str(pid), f'u:{binary}:event "%d", arg1'], name="trace-bpfcc",
                  env=env.bcc_env, stdout=out, stderr="lines")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and tracer.alive():   # its header is written after attaching
        if os.path.exists(out) and os.path.getsize(out) > 0:
            break
        time.sleep(0.01)
    else:
        log(f"  trace-bpfcc: not attached: {_last_error(tracer)}")
        return None

    def finish(target: Proc) -> EventOutcome:
        t_end = _settle_output(out)   # trace-bpfcc does not exit with its target
        tracer.stop(signal.SIGINT)
        delivered = _count_lines(out, rb"^\s*\d+\s+\d+\s+\S.*\sevent\s+-?\d+\s*$")
        lost = sum(int(x) for x in re.findall(r"Possibly lost (\d+) samples", tracer.text("stderr")))
        return EventOutcome(delivered, lost, t_end)

    return finish


def _ev_bpftrace(env: Env, binary: str, pid: int, tmp: str) -> Optional[Callable]:
    out = os.path.join(tmp, "bpftrace.out")
    program = f'usdt:{binary}:bench:event {{ printf("%d\\n", arg0); }} {BPFTRACE_READY}'
    tracer = Proc([env.bpftrace, "-p", str(pid), "-e", program], name="bpftrace", stdout=out, stderr="lines")
    deadline = time.monotonic() + 60
    ready = False
    while time.monotonic() < deadline and tracer.alive() and not ready:
        time.sleep(0.01)
        if os.path.exists(out):
            with open(out, "rb") as handle:
                ready = b"bench-ready" in handle.read(4096)
    if not ready:
        log(f"  bpftrace: not attached: {_last_error(tracer)}")
        return None

    def finish(target: Proc) -> EventOutcome:
        if not tracer.wait_exit(60):   # bpftrace -p exits with its target
            tracer.stop(signal.SIGINT)
        t_end = tracer.t_exit
        delivered = _count_lines(out, rb"^-?\d+$")
        text = tracer.text("stderr")
        with open(out, "rb") as handle:
            text += handle.read().decode(errors="replace")[-4096:]
        lost = sum(int(x) for x in re.findall(r"Lost (\d+) events", text))
        return EventOutcome(delivered, lost, t_end)

    return finish


# ======================================================================================== workers
def worker(argv: List[str]) -> int:
    """Run inside the venv Python: the usdtkit Python API side of the benchmarks."""
    sys.path.insert(0, REPO)
    if argv[0] == "reader":
        print(json.dumps(_reader_rates(int(argv[1]))), flush=True)
        return 0
    mode, pid, probe = argv[0], int(argv[1]), argv[2]
    import usdtkit  # noqa: PLC0415 - only the worker needs it

    if mode == "count":
        with usdtkit.trace(probe, pid=pid, events=False, count_by=[]) as session:
            print(f"attached {session.attach_seconds:.4f}", flush=True)
            session.run()   # until the target exits
        counts = session.counts()
        hits = sum(s.hits for s in session.stats().values())
        print(json.dumps({"count": counts.total() if counts is not None else None, "hits": hits}), flush=True)
        return 0
    if mode == "events":
        delivered = [0]

        def on_event(event: object) -> None:
            delivered[0] += 1

        with usdtkit.trace(probe, pid=pid, events=True, on_event=on_event) as session:
            print(f"attached {session.attach_seconds:.4f}", flush=True)
            session.run()
            t_end = time.monotonic()
        stats = session.stats().values()
        print(json.dumps({"delivered": delivered[0], "t_end": t_end,
                          "lost_events": sum(s.lost_events for s in stats), "hits": sum(s.hits for s in stats),
                          "dropped_by_user_queue": session.dropped_by_user_queue}), flush=True)
        return 0
    raise SystemExit(f"unknown worker mode {mode}")


def _reader_rates(m: int) -> Dict[str, float]:
    """Records per second of usdtkit's C reader alone: ``m`` records of ``bench:event``'s shape laid out
    as the kernel lays them out in ring buffer memory (two anonymous mappings standing for the map's),
    drained as the API delivers them (kept events and an ``on_event`` callback) and as ``trace --json``
    writes them (to /dev/null); no producer to wait for."""
    import collections  # noqa: PLC0415 - worker only
    import mmap  # noqa: PLC0415
    import struct  # noqa: PLC0415

    from usdtkit.bpf import codegen  # noqa: PLC0415
    from usdtkit.collect.native import native_decoder  # noqa: PLC0415
    from usdtkit.collect.records import ProbeDecoder, RecordDecoder  # noqa: PLC0415
    from usdtkit.elf.model import Arg, Register, RegisterValue  # noqa: PLC0415
    from usdtkit.plan.plan import AttachPlan  # noqa: PLC0415
    from usdtkit.plan.refs import ProbeRef  # noqa: PLC0415
    from usdtkit.plan.request import TraceRequest  # noqa: PLC0415
    from usdtkit.plan.resolve import ResolvedProbe, Site  # noqa: PLC0415

    arg = Arg(8, True, RegisterValue(Register("rdi", 64, 0, "rdi")), "8@%rdi")
    probe = ResolvedProbe(ProbeRef("usdt", "/b", "event", "bench"), "/b", (Site("/b", 16, 16, 0, (arg,)),), 1)
    layout = codegen.generate(AttachPlan(TraceRequest((probe.ref,), events=True), (probe,), None)).record
    decoder = native_decoder(RecordDecoder(layout, [ProbeDecoder("bench:event", 1, [True], [], False, False)], 128))
    if decoder is None:
        return {}
    record = layout.pack(ts=1 << 60, pid=123456, tid=123456, probe=0, cpu=1, args=[7], comm=b"sdt_bench")
    step = (len(record) + 8 + 7) & ~7
    size = 1 << (step * m - 1).bit_length()
    consumer, producer = mmap.mmap(-1, mmap.PAGESIZE), mmap.mmap(-1, mmap.PAGESIZE + 2 * size)
    producer[mmap.PAGESIZE:mmap.PAGESIZE + step * m] = (struct.pack("=II", len(record), 0) + record).ljust(step, b"\0") * m

    class Session:
        _stop = False

    delivered = [0]

    def on_event(event: object) -> None:
        delivered[0] += 1

    null = os.open(os.devnull, os.O_WRONLY)
    drains = {"events": lambda: decoder.drain_events(consumer, producer, size - 1, 10.0,
                                                     collections.deque(maxlen=1_000_000).append, on_event, Session),
              "json": lambda: decoder.drain_json(consumer, producer, size - 1, 10.0, null, -1)}
    rates = {}
    for name, drain in drains.items():
        struct.pack_into("=QQ", consumer, 0, 0, 0)
        struct.pack_into("=Q", producer, 0, step * m)
        started, done = time.perf_counter(), 0
        while done < m:
            done += drain()[0]
        rates[name] = m / (time.perf_counter() - started)
    os.close(null)
    return rates


# ======================================================================================== output
def _fmt(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f}"
    if unit == "ns/hit":
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    if unit == "events/s":
        return f"{value / 1e3:,.0f}k"
    return f"{value:.3g}"


def _spread(row: Row) -> str:
    if len(row.samples) < 2:
        return ""
    return f"{_fmt(min(row.samples), row.unit)}-{_fmt(max(row.samples), row.unit)}"


def render(results: Results, env: Env, args: argparse.Namespace) -> str:
    titles = {
        "per_hit": "1. Per-hit cost, traced USDT with an in-kernel count (ns per loop iteration; "
                   "ratio vs bpftrace)",
        "attach": "2. Start to attached, one process (s; ratio vs bcc)",
        "many_sites": "3. Start to attached, system-wide, probes with many call sites (s; ratio vs bpftrace)",
        "events": "4. Events delivered to user space (events/s = delivered / (last delivery - start of "
                  "firing); ratio vs bcc trace)",
    }
    out: List[str] = []
    out.append("usdtkit tracing benchmarks  " + "  ".join(f"{k}: {v}" for k, v in env.versions.items()))
    out.append(f"repetitions: {args.reps}  per-hit iterations: {args.hits}  burst events: {args.events}  "
               f"many sites: {args.sites}  targets pinned to CPU {env.cpu}, tracers to CPU(s) "
               f"{','.join(map(str, sorted(Proc.default_cpus or [])))}")
    for section in ("per_hit", "attach", "many_sites", "events"):
        rows = [r for r in results.rows if r.section == section]
        cases = list(dict.fromkeys(r.case for r in rows))
        rows.sort(key=lambda r: cases.index(r.case))   # stable: tools keep their order within a case
        if not rows:
            continue
        out.append("")
        out.append(titles[section])
        extras: List[str] = []
        for row in rows:
            for name in row.extra:
                if name not in extras:
                    extras.append(name)
        versus = ["vs bpftrace"] if section == "attach" else []  # the goal for a warm cache: at most 1.0x
        header = ["case", "tool", "median", "min-max", "ratio"] + versus + extras + ["runs ok", "note"]
        table: List[List[str]] = []
        for row in rows:
            ref = results.reference(section, row.case)
            ratio = ""
            if ref is not None and row.samples and ref is not row:
                ratio = f"{row.median() / ref.median():.2f}x"
            elif ref is row:
                ratio = "ref"
            cells = [row.case, row.tool, _fmt(row.median(), row.unit), _spread(row), ratio]
            if versus:
                bpftrace = next((r for r in rows if r.case == row.case and r.tool == "bpftrace" and r.samples), None)
                cells.append(f"{row.median() / bpftrace.median():.2f}x" if bpftrace and row.samples else "")
            for name in extras:
                value = row.median(name)
                if value is None:
                    cells.append("-")
                elif "MB" in name:
                    cells.append(f"{value:.0f}")
                elif "(s)" in name or name == "seconds to deliver":
                    cells.append(f"{value:.3f}")
                elif name.endswith("/s while traced"):
                    cells.append(f"{value / 1e3:,.0f}k")
                elif name.startswith("target slowdown"):
                    cells.append(f"{value:.2f}x")
                elif name.endswith("%"):
                    cells.append(f"{value:.1f}")
                else:
                    cells.append(f"{value:,.0f}")
            ok = sum(1 for c in row.checks if c.startswith("ok"))
            cells.append(f"{ok}/{len(row.checks)}" if row.checks else "-")
            problems = sorted({c for c in row.checks if not c.startswith("ok")})
            cells.append("; ".join(filter(None, [row.note] + problems))[:110])
            table.append(cells)
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out.append(line(header))
        out.append(line(["-" * w for w in widths]))
        previous_case = None
        for cells in table:
            shown = list(cells)
            if cells[0] == previous_case:
                shown[0] = ""
            previous_case = cells[0]
            out.append(line(shown))
        if section in PREVIOUS:
            out.append(f"({PREVIOUS[section]})")
    if results.findings:
        out.append("")
        out.append("Notes:")
        out += [f"- {f}" for f in results.findings]
    return "\n".join(out)


# ======================================================================================== main
SECTIONS = ("per_hit", "attach", "many_sites", "events")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one repetition, smaller workloads, fewer many-site runs (about a minute)")
    parser.add_argument("--reps", type=int, help="repetitions of every measurement (3; 1 with --quick)")
    parser.add_argument("--hits", type=int, help="loop iterations of the per-hit benchmark (3M; 1M with --quick)")
    parser.add_argument("--events", type=int, help="events fired by the events benchmark (1M; 500k with --quick)")
    parser.add_argument("--sites", type=int, choices=(64, 128, 192, 256, 320, 384, 448, 512),
                        help="call sites of the many_sites probes (256; 128 with --quick); detaching them "
                             "takes ~0.14 s per site here with every tool")
    parser.add_argument("--only", help=f"comma-separated sections to run: {','.join(SECTIONS)}")
    parser.add_argument("--without", default="", help="treat these reference tools as missing: bpftrace,bcc")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of the table")
    args = parser.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.hits = args.hits or (1_000_000 if args.quick else 3_000_000)
    args.events = args.events or (500_000 if args.quick else 1_000_000)
    args.sites = args.sites or (128 if args.quick else 256)
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    if os.geteuid() != 0:
        print("bench_trace: run as root (BPF programs and uprobes)", file=sys.stderr)
        return 1

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    if not os.path.isdir("/sys/kernel/tracing/events") and os.path.isdir("/sys/kernel/tracing"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=False)
    started = time.monotonic()
    results = Results()
    env = discover()
    without = {w.strip() for w in args.without.split(",") if w.strip()}
    if without - {"bpftrace", "bcc"}:
        parser.error(f"--without takes bpftrace and/or bcc, not {args.without!r}")
    if "bpftrace" in without:
        env.bpftrace = None
        env.versions["bpftrace"] = "left out (--without)"
    if "bcc" in without:
        env.bcc_trace = env.bcc_funclatency = None
        env.versions["bcc"] += " (tools left out: --without)"
    build_programs(env, args.sites)
    status = 0
    with tempfile.TemporaryDirectory(prefix="usdtkit-bench-") as tmp:
        try:
            if "per_hit" in only:
                per_hit(env, results, args.reps, args.hits)
            if "attach" in only:
                attach(env, results, args.reps)
            if "many_sites" in only:
                many_sites(env, results, args.reps, args.sites, args.quick)
            if "events" in only:
                events(env, results, args.reps, args.events, tmp)
        except KeyboardInterrupt:
            log("interrupted: printing what was measured")
            status = 130
        finally:
            Proc.stop_all()
    elapsed = time.monotonic() - started
    if args.json:
        doc = {"versions": env.versions, "parameters": {k: getattr(args, k) for k in ("reps", "hits", "events", "sites")},
               "cpu": env.cpu, "seconds": round(elapsed, 1), "rows": [r.to_json() for r in results.rows],
               "findings": results.findings}
        print(json.dumps(doc, indent=1))
    else:
        print(render(results, env, args))
        print(f"\n(run took {elapsed:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
