"""Nothing leaks: semaphores go back to their value, no uprobe, program or fd stays behind, after
detach, after the target exits, and after the tracer is killed with SIGKILL; a command started under
trace, and everything it starts, lives exactly as long as its session."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from usdtkit.errors import TargetError
from usdtkit.tracing.api import trace
from usdtkit.tracing.keeper import GRACE_SECONDS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def programs_of_other_processes() -> set:
    """Program IDs held through an fd by some other live process (concurrent tracers on the machine)."""
    held = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fdinfo"):
                with open(f"/proc/{entry}/fdinfo/{fd}") as info:
                    for line in info:
                        if line.startswith("prog_id:"):
                            held.add(int(line.split()[1]))
        except OSError:
            continue
    return held


def usdtkit_program_ids() -> set:
    """IDs of loaded BPF programs named by usdtkit that no other live process holds."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"bpftool cannot list programs: {out.stderr.strip()}")
    ids = {p["id"] for p in json.loads(out.stdout or "[]") if p.get("name", "").startswith("usdtkit_")}
    return ids - programs_of_other_processes() if ids else ids


def bpf_fds_of_this_process() -> int:
    """Open fds of this process that hold a BPF program, map or link."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "bpf" in os.readlink(f"/proc/self/fd/{fd}"):
                count += 1
        except OSError:
            pass
    return count


def assert_no_new_programs(before: set) -> None:
    """No program usdtkit loaded since ``before`` is still loaded (after the kernel's deferred free)."""
    deadline = time.time() + 5  # links and programs are freed after an RCU grace period
    while usdtkit_program_ids() - before and time.time() < deadline:
        time.sleep(0.05)
    assert not usdtkit_program_ids() - before


@pytest.fixture
def programs_before():
    """Programs loaded before the test: what is new after it was left behind by it."""
    return usdtkit_program_ids()


def tracefs_uprobes() -> str:
    for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        path = os.path.join(base, "uprobe_events")
        if os.path.exists(path):
            with open(path) as handle:
                return handle.read()
    subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], capture_output=True)
    with open("/sys/kernel/tracing/uprobe_events") as handle:
        return handle.read()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def _semaphore_reader(read_semaphore):
    global semaphore_value
    semaphore_value = read_semaphore


@pytest.fixture
def waiting_target(build_c, processes):
    binary = build_c("usdt_args.c", "-O2")
    proc = processes([binary, "5"])
    time.sleep(0.05)
    return binary, proc


@pytest.mark.bpf
def test_semaphore_follows_the_trace_and_survives_sigkill(waiting_target, programs_before):
    binary, target = waiting_target
    assert semaphore_value(target.pid, binary, "guarded") == 0
    with trace(f"usdt:{binary}:demo:guarded", pid=target.pid):
        assert semaphore_value(target.pid, binary, "guarded") == 1
    assert semaphore_value(target.pid, binary, "guarded") == 0

    tracer = subprocess.Popen(
        [sys.executable, "-m", "usdtkit.cli.main", "count", "-p", str(target.pid), f"usdt:{binary}:demo:guarded"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=ROOT), text=True)
    try:
        line = tracer.stderr.readline()
        assert line.startswith("Attached"), line
        assert semaphore_value(target.pid, binary, "guarded") == 1
        tracer.send_signal(signal.SIGKILL)
        tracer.wait(timeout=10)
    finally:
        if tracer.poll() is None:
            tracer.kill()
        tracer.stderr.close()
    deadline = time.time() + 5
    while semaphore_value(target.pid, binary, "guarded") != 0 and time.time() < deadline:
        time.sleep(0.05)
    assert semaphore_value(target.pid, binary, "guarded") == 0
    assert_no_new_programs(programs_before)  # the killed tracer's programs went with it


@pytest.mark.bpf
def test_sigterm_and_sigint_detach_and_print_what_was_collected(waiting_target, programs_before):
    binary, target = waiting_target
    for sig in (signal.SIGTERM, signal.SIGINT):
        tracer = subprocess.Popen(
            [sys.executable, "-m", "usdtkit.cli.main", "count", "-p", str(target.pid), "--json",
             f"usdt:{binary}:demo:guarded"],
            stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT), text=True)
        deadline = time.time() + 30
        while semaphore_value(target.pid, binary, "guarded") != 1 and time.time() < deadline:
            time.sleep(0.05)
        tracer.send_signal(sig)
        out, err = tracer.communicate(timeout=20)
        assert tracer.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["stats"]["demo:guarded"]["hits"] == 0
        assert semaphore_value(target.pid, binary, "guarded") == 0
    assert_no_new_programs(programs_before)


@pytest.mark.bpf
def test_a_hundred_attach_detach_cycles_leave_nothing(waiting_target, programs_before):
    binary, target = waiting_target
    before_fds = open_fds()
    before_bpf = bpf_fds_of_this_process()
    before_uprobes = tracefs_uprobes()
    for _ in range(100):
        with trace(f"usdt:{binary}:demo:guarded", f"usdt:{binary}:demo:args", pid=target.pid) as session:
            assert session.attached
    assert open_fds() == before_fds
    assert tracefs_uprobes() == before_uprobes
    assert bpf_fds_of_this_process() == before_bpf
    assert_no_new_programs(programs_before)
    assert semaphore_value(target.pid, binary, "guarded") == 0
    assert semaphore_value(target.pid, binary, "args") == 0


@pytest.mark.bpf
def test_target_exit_ends_the_trace_with_what_was_collected(build_c, processes):
    binary = build_c("usdt_args.c", "-O2")
    target = processes([binary, "7"])
    with trace(f"usdt:{binary}:demo:guarded", pid=target.pid, count_by=["arg0"]) as session:
        target.stdin.write(b"g")
        target.stdin.flush()
        started = time.monotonic()
        session.run(duration=60)
        assert time.monotonic() - started < 30
        assert session.target_exited
    assert session.counts().total() == 7
    assert session.stats()["demo:guarded"].hits == 7


@pytest.mark.bpf
def test_semaphore_fallback_writes_and_restores(waiting_target, monkeypatch):
    """On kernels without ref_ctr_offset usdtkit writes the semaphore itself and undoes it on exit."""
    from usdtkit.bpf import capabilities

    monkeypatch.setenv("USDTKIT_NO_SEMA_REFCNT", "1")
    capabilities.detect.cache_clear()
    try:
        assert not capabilities.detect().has_sema_refcnt
        binary, target = waiting_target
        with trace(f"usdt:{binary}:demo:guarded", pid=target.pid, count_by=["arg0"]) as session:
            assert semaphore_value(target.pid, binary, "guarded") == 1
            with pytest.raises(RuntimeError):
                with trace(f"usdt:{binary}:demo:guarded", pid=target.pid):
                    assert semaphore_value(target.pid, binary, "guarded") == 2
                    raise RuntimeError("an exception inside the trace")
            assert semaphore_value(target.pid, binary, "guarded") == 1
            target.stdin.write(b"g")
            target.stdin.flush()
            session.run(duration=20)
        assert session.counts().total() == 5  # the guarded probe really fired: the semaphore was on
    finally:
        monkeypatch.delenv("USDTKIT_NO_SEMA_REFCNT")
        capabilities.detect.cache_clear()


# --------------------------------------------------------------------------- commands started under trace
# A command given with -c / command= lives exactly as long as its session: not less (a thread that
# ends is not the tracer ending), not more (its children go with it, even when the tracer is killed).

TREE = "(setsid sleep 100 &); sleep 100 & sleep 100"  # two children of sh, and one daemonised away from it


@pytest.fixture(scope="module")
def hello(tmp_path_factory):
    out = tmp_path_factory.mktemp("hello") / "hello_usdt"
    subprocess.run(["gcc", "-O2", "-o", str(out), os.path.join(ROOT, "demo_apps", "hello_usdt.c")], check=True)
    return str(out)


def usdtkit_link_ids() -> set:
    """IDs of BPF links that hold a usdtkit program no other live process holds."""
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"bpftool cannot list links: {out.stderr.strip()}")
    programs = usdtkit_program_ids()
    return {link["id"] for link in json.loads(out.stdout or "[]") if link.get("prog_id") in programs}


def process_state(pid: int) -> str:
    """The one-letter state of a process ('' when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def marked_sleepers(marker: str) -> list:
    """Live ``sleep`` processes whose environment carries ``marker``: the tree of one test, wherever
    its processes were reparented."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
        except OSError:
            continue
        if argv[0] == b"sleep" and marker.encode() in environ and process_state(int(entry)) not in ("", "Z"):
            found.append(int(entry))
    return found


def wait_for(condition, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    return condition()


@pytest.fixture
def tree_marker(monkeypatch):
    """An environment variable only this test's command tree carries; whatever survives is killed after."""
    marker = f"USDTKIT_TEST_TREE={os.getpid()}.{time.monotonic_ns()}"
    monkeypatch.setenv(*marker.split("=", 1))
    yield marker
    for pid in marked_sleepers(marker):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.bpf
def test_a_command_dead_before_release_is_an_error_and_leaks_nothing(hello, programs_before):
    links_before = usdtkit_link_ids()
    fds_before, bpf_before = open_fds(), bpf_fds_of_this_process()
    for _ in range(3):
        session = trace("usdt::hello:tick", command=[hello, "3"])
        os.kill(session.command.pid, signal.SIGKILL)
        assert wait_for(lambda: process_state(session.command.pid) in ("", "Z"))
        expected = r"^command .*hello_usdt exited \(killed by SIGKILL\) before tracing started$"
        with pytest.raises(TargetError, match=expected):
            with session:
                pytest.fail("attached to a command that had exited")
        assert not session.attached
    assert open_fds() == fds_before
    assert bpf_fds_of_this_process() == bpf_before
    assert_no_new_programs(programs_before)
    assert not usdtkit_link_ids() - links_before


def gated_command_of(tracer: subprocess.Popen) -> int:
    """The command a ``usdtkit -c`` process started, while it still waits for the tracer (not exec'd yet,
    blocked reading its gate pipe); 0 when there is none (yet)."""
    python = os.path.realpath(sys.executable)
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor not in (None, 0, 1, tracer.pid):
            ancestor = parents.get(ancestor)
        if ancestor != tracer.pid:
            continue
        try:
            with open(f"/proc/{pid}/wchan") as handle:
                blocked_on_pipe = "pipe_read" in handle.read()
            exe = os.path.realpath(f"/proc/{pid}/exe")
        except OSError:
            continue
        if blocked_on_pipe and exe == python:
            return pid
    return 0


@pytest.mark.bpf
def test_cli_command_dead_before_release_is_one_line_and_nonzero(hello):
    tracer = subprocess.Popen(
        [sys.executable, "-m", "usdtkit.cli.main", "count", "-c", f"{hello} 3", "usdt::hello:tick"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=ROOT), text=True,
        # a group of its own, under this process: when the killed command leaves the group while the
        # tracer is stopped, the group is not orphaned, so the kernel sends no SIGHUP to anyone
        process_group=0)
    try:
        command = wait_for(lambda: gated_command_of(tracer), timeout=30)
        assert command, "the gated command never showed up"
        tracer.send_signal(signal.SIGSTOP)  # cannot release the command while it is being killed
        try:
            assert gated_command_of(tracer) == command, "the command was released before the test could kill it"
            os.kill(command, signal.SIGKILL)
            assert wait_for(lambda: process_state(command) in ("", "Z"))
        finally:
            tracer.send_signal(signal.SIGCONT)
        out, err = tracer.communicate(timeout=60)
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.communicate()
    assert tracer.returncode == 1, err
    assert err.splitlines() == [f"usdtkit: error: command {hello} exited (killed by SIGKILL) before tracing started"]
    assert out == ""


@pytest.mark.bpf
def test_a_command_started_from_a_thread_outlives_the_thread(hello):
    made = {}

    def handler() -> None:  # what a worker of a thread pool or a web server would do
        made["session"] = trace("usdt::hello:tick", command=[hello, "50"])
        made["session"].attach()

    worker = threading.Thread(target=handler)
    worker.start()
    worker.join()
    session = made["session"]
    try:
        time.sleep(0.2)  # the thread has ended: the command must not have gone with it
        assert session.command.process.poll() is None
        session.run(duration=60)
        assert session.target_exited
        assert session.command.wait(timeout=10) == 0
        assert session.stats()["hello:tick"].hits == 50
    finally:
        session.close()


@pytest.mark.bpf
def test_closing_the_session_stops_the_whole_tree_and_nothing_else(processes, tree_marker):
    name = tree_marker.split("=", 1)[0]
    bystander = processes(["sleep", "100"], env={k: v for k, v in os.environ.items() if k != name})  # not of the tree
    with trace("uprobe:libc:nanosleep", command=["sh", "-c", TREE], events=False) as session:
        assert wait_for(lambda: len(marked_sleepers(tree_marker)) == 3), marked_sleepers(tree_marker)
    assert marked_sleepers(tree_marker) == []
    assert bystander.poll() is None
    assert session.command.process.poll() is not None


@pytest.mark.bpf
def test_a_tree_that_ignores_sigterm_gets_sigkill_after_the_grace_period(tree_marker):
    with trace("uprobe:libc:nanosleep", command=["sh", "-c", "trap '' TERM; " + TREE], events=False):
        assert wait_for(lambda: len(marked_sleepers(tree_marker)) == 3), marked_sleepers(tree_marker)
        closing = time.monotonic()
    took = time.monotonic() - closing
    assert marked_sleepers(tree_marker) == []
    assert GRACE_SECONDS <= took < GRACE_SECONDS + 5


@pytest.mark.bpf
def test_a_killed_tracer_takes_the_whole_tree_with_it(tree_marker):
    tracer = subprocess.Popen([sys.executable, "-m", "usdtkit.cli.main", "count", "-c", f"sh -c '{TREE}'",
                               "uprobe:libc:nanosleep"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT), text=True)
    try:
        line = tracer.stderr.readline()
        assert line.startswith("Attached"), line
        assert wait_for(lambda: len(marked_sleepers(tree_marker)) == 3), marked_sleepers(tree_marker)
        tracer.kill()
        tracer.wait(timeout=10)
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        tracer.stderr.close()
    assert wait_for(lambda: not marked_sleepers(tree_marker), timeout=10), marked_sleepers(tree_marker)
