"""Probes declared with usdtkit.provider, traced for real by bpftrace (root): every argument type
round-trips exactly, ``probe.enabled`` follows the tracer, one attach by path covers a multi-process
service, the listing tools see the probes, and the PyPI stapsdt example is traceable.

Each firing program runs as a child process that waits until its probes are enabled (bpftrace prints
"Attaching N probes..." before it attaches) and fires until its stdin is closed."""
from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest


ROOT = Path(__file__).resolve().parents[2]

CHILD_PRELUDE = """
import os, sys, threading, time
import usdtkit
from usdtkit.provider import Provider, int8, int16, int32, int64, uint8, uint16, uint32, uint64

def wait_enabled(*probes, timeout=60):
    deadline = time.monotonic() + timeout
    while not all(p.enabled for p in probes):
        if time.monotonic() > deadline:
            print("timeout waiting for the tracer", flush=True)
            os._exit(3)
        time.sleep(0.01)
    time.sleep(0.3)  # the semaphore rises as the uprobe registers, just before the program attaches

_stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), _stop.set()), daemon=True).start()
def running():
    return not _stop.is_set()
"""


class Lines:
    """Reads a process's stdout on a thread; lets the test wait for lines with a timeout."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.seen: List[str] = []
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            self._queue.put(raw.decode("utf-8", "surrogateescape").rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching line within {timeout}s; seen: {self.seen[-20:]}")
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"stream ended; seen: {self.seen[-20:]}")
            self.seen.append(line)
            if predicate(line):
                return line

    def wait_for_all(self, expected: set, timeout: float = 60) -> None:
        missing = set(expected)
        deadline = time.monotonic() + timeout
        while missing:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"missing {sorted(missing)}; seen: {sorted(set(self.seen))[:40]}")
            missing.discard(self.wait_for(lambda line: True, timeout=left))

    def rest(self, timeout: float = 30) -> List[str]:
        """All remaining lines until the stream ends."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"stream did not end; got {out[-10:]}")
            if line is None:
                return out
            self.seen.append(line)
            out.append(line)


@pytest.fixture(scope="module", autouse=True)
def tracer_environment() -> None:
    problem = None
    if os.geteuid() != 0:
        problem = "needs root"
    elif shutil.which("bpftrace") is None:
        problem = "bpftrace is not installed"
    elif not Path("/sys/kernel/tracing/available_events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], capture_output=True)
        if not Path("/sys/kernel/tracing/available_events").exists():
            problem = "tracefs is not mounted at /sys/kernel/tracing"
    if problem:
        pytest.skip(problem)  # the plugin turns it into a failure where BPF is required


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def spawn(runtime_dir: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start processes (Python children or tracers); all are stopped and reaped afterwards."""
    started: List[subprocess.Popen] = []

    def start(argv: List[str], python_body: Optional[str] = None) -> subprocess.Popen:
        if python_body is not None:
            argv = [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(python_body)] + argv
        env = dict(os.environ, PYTHONPATH=str(ROOT), USDTKIT_RUNTIME_DIR=str(runtime_dir))
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        if proc.poll() is None:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream and not stream.closed:
                stream.close()


def start_bpftrace(spawn: Callable[..., subprocess.Popen], program: str, *args: str) -> Lines:
    proc = spawn(["bpftrace", *args, "-e", program])
    lines = Lines(proc)
    lines.wait_for(lambda line: line.startswith("Attaching"))
    return lines


def stop(proc: subprocess.Popen) -> None:
    """Stop a tracer the way a user does (Ctrl-C), so it prints its maps and detaches."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


# ---------------------------------------------------------------- values


ROUND_TRIP_APP = """
app = Provider("roundtrip")
signed = app.probe("signed", int8, int16, int32, int64)
unsigned = app.probe("unsigned", uint8, uint16, uint32, uint64)
python = app.probe("python", int, bool, str, bytes)
app.load()
print(app.path, flush=True)
wait_enabled(signed, unsigned, python)
while running():
    signed(-2**7, -2**15, -2**31, -2**63)
    signed(2**7 - 1, 2**15 - 1, 2**31 - 1, 2**63 - 1)
    signed(-1, 0, 1, -2)
    unsigned(0, 0, 0, 0)
    unsigned(2**8 - 1, 2**16 - 1, 2**32 - 1, 2**64 - 1)
    python(2**63 - 1, True, "héllo wörld ✓", b"raw\\xff bytes")
    python(-2**63, False, "日本語のテキスト", b"")
    python(0, True, "", None)
    time.sleep(0.05)
"""


@pytest.mark.bpf
def test_every_argument_type_round_trips_exactly(spawn):
    app = spawn([], ROUND_TRIP_APP)
    app_out = Lines(app)
    path = app_out.wait_for(lambda line: line.startswith("/"))
    program = f"""
    usdt:{path}:roundtrip:signed {{ printf("S|%d|%d|%d|%lld\\n", arg0, arg1, arg2, arg3); }}
    usdt:{path}:roundtrip:unsigned {{ printf("U|%u|%u|%u|%llu\\n", arg0, arg1, arg2, arg3); }}
    usdt:{path}:roundtrip:python {{
        printf("P|%lld|%d|%s|%s|%d\\n", arg0, arg1, str(arg2), arg3 ? str(arg3) : "<null>", arg3 == 0);
    }}
    """
    trace = start_bpftrace(spawn, program)
    expected = {
        f"S|{-2**7}|{-2**15}|{-2**31}|{-2**63}",
        f"S|{2**7 - 1}|{2**15 - 1}|{2**31 - 1}|{2**63 - 1}",
        "S|-1|0|1|-2",
        "U|0|0|0|0",
        f"U|{2**8 - 1}|{2**16 - 1}|{2**32 - 1}|{2**64 - 1}",
        f"P|{2**63 - 1}|1|héllo wörld ✓|raw\udcff bytes|0",
        f"P|{-2**63}|0|日本語のテキスト||0",
        "P|0|1||<null>|1",
    }
    trace.wait_for_all(expected)
    stop(trace.proc)


# ---------------------------------------------------------------- enabled follows the tracer


@pytest.mark.bpf
@pytest.mark.parametrize("memfd", [False, True], ids=["file", "memfd"])
def test_enabled_is_false_untraced_true_while_traced_false_after(spawn, memfd):
    app = spawn([], f"""
    app = Provider("toggle", memfd={memfd})
    probe = app.probe("tick", int)
    other = app.probe("other")
    app.load()
    print("pid", os.getpid(), app.path, flush=True)
    last = None
    n = 0
    while running():
        state = (bool(probe.enabled), bool(other.enabled))
        if state != last:
            print("enabled", *state, flush=True)
            last = state
        if probe.enabled:
            probe(n)
        n += 1
        time.sleep(0.005)
    """)
    out = Lines(app)
    _, pid, _path = out.wait_for(lambda line: line.startswith("pid")).split()
    assert out.wait_for(lambda line: line.startswith("enabled")) == "enabled False False"
    time.sleep(0.5)
    assert out.seen[-1] == "enabled False False", "nothing traces it yet"

    trace = start_bpftrace(spawn, 'usdt:*:toggle:tick { printf("hit %d\\n", arg0); }', "-p", pid)
    out.wait_for(lambda line: line == "enabled True False")  # only the traced probe is enabled
    trace.wait_for(lambda line: line.startswith("hit "))  # and the tracer really receives it
    stop(trace.proc)
    out.wait_for(lambda line: line == "enabled False False")


# ---------------------------------------------------------------- one attach covers a service


SERVICE_APP = """
app = Provider("service")
work = app.probe("work", int, str)
app.load()
role = sys.argv[1]
parent, children = os.getpid(), []
if role == "parent":
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            role = "worker"
            break
        children.append(pid)
if role != "worker":
    print("pids", os.getpid(), *children, app.path, flush=True)
# Workers have no stdin thread (fork copies only the calling thread): they stop with their parent.
while (running() if role != "worker" else os.getppid() == parent):
    if work.enabled:
        work(os.getpid(), role)
    time.sleep(0.01)
if role == "worker":
    os._exit(0)
for pid in children:
    os.kill(pid, 15)
    os.waitpid(pid, 0)
"""


@pytest.mark.bpf
def test_one_attach_by_path_covers_forked_workers_and_later_processes(spawn):
    service = spawn(["parent"], SERVICE_APP)
    out = Lines(service)
    fields = out.wait_for(lambda line: line.startswith("pids")).split()
    family, path = [int(p) for p in fields[1:-1]], fields[-1]
    assert len(family) == 4

    trace = start_bpftrace(spawn, f'usdt:{path}:service:work {{ printf("%d %s\\n", arg0, str(arg1)); }}')
    # A process started after the tracer attached, with the same definition: same file, covered.
    later = spawn(["later"], SERVICE_APP)
    later_fields = Lines(later).wait_for(lambda line: line.startswith("pids")).split()
    assert later_fields[-1] == path, "same provider and probes in another process: same file"
    later_pid = int(later_fields[1])
    expected = {f"{family[0]} parent", f"{later_pid} later"} | {f"{pid} worker" for pid in family[1:]}
    trace.wait_for_all(expected)
    stop(trace.proc)
    seen = {line for line in trace.seen + trace.rest() if re.match(r"\d+ \w+$", line)}
    assert seen == expected, "every event comes from the service's processes, with the right role"


# ---------------------------------------------------------------- listing tools


@pytest.mark.bpf
def test_listing_tools_see_the_probes_of_a_process(spawn):
    app = spawn([], """
    app = Provider("listed")
    app.probe("alpha", int)
    app.probe("beta", str, bool)
    app.load()
    print("pid", os.getpid(), app.path, flush=True)
    while running():
        time.sleep(0.05)
    """)
    _, pid, path = Lines(app).wait_for(lambda line: line.startswith("pid")).split()

    listing = subprocess.run(["bpftrace", "-l", "usdt:*", "-p", pid], capture_output=True,
                             text=True, timeout=120).stdout
    # With -p, bpftrace names the object through the process's root: /proc/PID/root/<path>.
    for probe in ("alpha", "beta"):
        assert f"usdt:/proc/{pid}/root{path}:listed:{probe}" in listing.splitlines(), listing

    if shutil.which("tplist-bpfcc") is None:
        pytest.skip("tplist-bpfcc (bpfcc-tools) is not installed")
    tplist = subprocess.run(["tplist-bpfcc", "-p", pid], capture_output=True, text=True, timeout=120)
    for probe in ("alpha", "beta"):
        assert f"/proc/{pid}/root{path} listed:{probe}" in tplist.stdout.splitlines(), tplist.stdout


# ---------------------------------------------------------------- spans and traced functions


@pytest.mark.bpf
def test_traced_function_and_span_probes_carry_ids_durations_and_errors(spawn):
    app = spawn([], """
    app = Provider("timed")
    @app.traced()
    def handle(fail):
        time.sleep(0.02)
        if fail:
            raise ValueError("boom")
    query = app.span("query")
    app.load()
    print(app.path, flush=True)
    wait_enabled(handle.entry_probe, handle.return_probe, query.start, query.done)
    while running():
        for fail in (False, True):
            try:
                handle(fail)
            except ValueError:
                pass
        with query() as span_id:
            time.sleep(0.01)
        time.sleep(0.05)
    """)
    path = Lines(app).wait_for(lambda line: line.startswith("/"))
    program = f"""
    usdt:{path}:timed:handle_entry {{ printf("E %llu\\n", arg0); }}
    usdt:{path}:timed:handle_return {{ printf("R %llu %llu %d\\n", arg0, arg1, arg2); }}
    usdt:{path}:timed:query_start {{ printf("S %llu\\n", arg0); }}
    usdt:{path}:timed:query_done {{ printf("D %llu %llu %d\\n", arg0, arg1, arg2); }}
    """
    trace = start_bpftrace(spawn, program)
    for pattern in (r"R \d+ \d+ 0$", r"R \d+ \d+ 1$", r"D \d+ \d+ 0$"):
        trace.wait_for(lambda line: re.match(pattern, line) is not None)
    stop(trace.proc)
    lines = trace.seen + trace.rest()
    entries = {int(l.split()[1]) for l in lines if l.startswith("E ")}
    starts = {int(l.split()[1]) for l in lines if l.startswith("S ")}
    returns = [tuple(int(x) for x in l.split()[1:]) for l in lines if l.startswith("R ")]
    dones = [tuple(int(x) for x in l.split()[1:]) for l in lines if l.startswith("D ")]
    assert returns and dones
    assert {r[2] for r in returns} == {0, 1}, "both the normal and the raising call"
    for call_id, duration, _raised in returns:
        assert 20_000_000 <= duration < 2_000_000_000
        assert call_id in entries or call_id == min(r[0] for r in returns)
    for span_id, duration, raised in dones:
        assert raised == 0 and 10_000_000 <= duration < 2_000_000_000
        assert span_id in starts or span_id == min(d[0] for d in dones)


# ---------------------------------------------------------------- the PyPI stapsdt package


@pytest.mark.bpf
def test_stapsdt_readme_example_is_seen_by_bpftrace(spawn):
    app = spawn([sys.executable, "-c", textwrap.dedent("""
        import os, time
        import usdtkit
        from stapsdt import Provider, ArgTypes

        provider = Provider("pythonapp")
        probe = provider.add_probe("firstProbe", ArgTypes.uint64, ArgTypes.int32)
        provider.load()
        print("pid", os.getpid(), flush=True)
        for _ in range(6000):
            probe.fire("My little probe", 42)
            time.sleep(0.01)
    """)])
    pid = Lines(app).wait_for(lambda line: line.startswith("pid")).split()[1]
    trace = start_bpftrace(
        spawn, 'usdt:*:pythonapp:firstProbe { printf("%s %d\\n", str(arg0), arg1); exit(); }', "-p", pid)
    assert trace.wait_for(lambda line: "little" in line, timeout=60) == "My little probe 42"
    trace.proc.wait(timeout=30)
