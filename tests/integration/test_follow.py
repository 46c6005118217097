"""-F/--follow: the target and its descendants, those alive at attach time and those started later (a
shell's commands, ``env``'s exec, PostgreSQL's backends), and no other process, even one that gets the
id of a followed process that exited."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from usdtkit.bpf import follow
from usdtkit.errors import TargetError
from usdtkit.tracing.api import trace

from test_exporter import PG_BIN, postgres_cluster  # noqa: F401  (the fixture, shared)
from test_lifecycle import assert_no_new_programs, bpf_fds_of_this_process, open_fds, programs_before  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELLO = os.path.join(ROOT, "demo_apps", "build", "hello_usdt")
TICK = f"usdt:{HELLO}:hello:tick"
ENV = dict(os.environ, PYTHONPATH=ROOT)

# A parent like a server: one child running before the trace attaches, two started after it (each
# waited for), and a thread; it reports their ids on stdout and waits on stdin between the steps.
PARENT = """
import subprocess, sys, threading
hello = sys.argv[1]
early = subprocess.Popen([hello, "1000000", "early"], stdout=subprocess.DEVNULL)
print(early.pid, flush=True)
sys.stdin.readline()
ready = threading.Event()
thread = threading.Thread(target=lambda: (ready.set(), sys.stdin.readline()))
thread.start()
ready.wait()
ids = [thread.native_id]
for count in (3, 2):
    child = subprocess.Popen([hello, str(count)], stdout=subprocess.DEVNULL)
    child.wait()
    ids.append(child.pid)
print(*ids, flush=True)
thread.join()
early.kill()
early.wait()
sys.stdin.readline()
"""


def usdtkit(*argv: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", *argv], capture_output=True, text=True,
                          timeout=120, env=env or ENV)


def count_rows(out: str):
    return [line.split() for line in out.splitlines()[1:] if line.strip()]


@pytest.fixture
def parent(processes):
    """The forking parent (see PARENT), with the id of the child it started first (killed after the
    test too: a parent killed first leaves it to init)."""
    proc = processes([sys.executable, "-c", PARENT, HELLO], text=True)
    early = int(proc.stdout.readline())
    handle = os.pidfd_open(early)  # its parent has not waited for it: the id is still that child's
    try:
        yield proc, early
    finally:
        try:
            signal.pidfd_send_signal(handle, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(handle)


def by_pid(session) -> dict:
    return {key[1]: count for key, count in session.counts().items()}


@pytest.mark.bpf
def test_a_shell_command_is_followed_to_its_children_and_grandchildren():
    command = f"sh -c '{HELLO} 3; sh -c \"{HELLO} 2; true\"; true'"
    followed = usdtkit("count", "-F", "--by", "pid", "-c", command, TICK)
    assert followed.returncode == 0, followed.stderr
    rows = count_rows(followed.stdout)
    assert sorted(int(row[2]) for row in rows) == [2, 3] and len({row[1] for row in rows}) == 2, followed.stdout
    alone = usdtkit("count", "--by", "pid", "-c", command, TICK)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.strip() == "(no hits)"
    assert "note: no hits in the command itself; if it starts other programs (as a shell does), add -F" in alone.stderr


@pytest.mark.bpf
def test_env_execs_the_program_in_the_followed_process():
    with trace(TICK, command=["env", HELLO, "3"], command_stdout=subprocess.DEVNULL, follow=True, events=False,
               count_by=["pid"]) as session:
        session.run(duration=30)
    assert by_pid(session) == {session.command.pid: 3}


@pytest.mark.bpf
def test_p_follows_children_running_and_started_later_not_threads_nor_other_processes(parent, processes):
    proc, early = parent
    unrelated = processes([HELLO, "1000000", "unrelated"])  # the same binary, outside the tree
    with trace(TICK, pid=proc.pid, follow=True, events=False, count_by=["pid"]) as session:
        assert session.followed() == sorted([proc.pid, early])
        proc.stdin.write("go\n")
        proc.stdin.flush()
        thread, *children = (int(word) for word in proc.stdout.readline().split())
        followed_now = session.followed()
        proc.stdin.write("end thread\n")
        proc.stdin.flush()
    counts = by_pid(session)
    assert counts[children[0]] == 3 and counts[children[1]] == 2
    assert counts[early] > 0
    assert set(counts) == {early, *children}  # the unrelated process is not counted
    assert unrelated.poll() is None
    assert followed_now == sorted([proc.pid, early])  # exited children left; a thread never came in
    assert thread not in followed_now


def test_without_follow_a_binary_only_children_run_is_not_in_the_process(parent):
    proc, _ = parent
    with pytest.raises(TargetError, match=f"^pid {proc.pid} does not map {HELLO}$"):
        trace(TICK, pid=proc.pid, events=False)


def spawn_with_pid(wanted: int, argv: list, attempts: int = 300):
    """Start ``argv`` with process id ``wanted`` (free, and next after ns_last_pid), or None when other
    processes of the machine keep taking it first."""
    for _ in range(attempts):
        with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
            handle.write(str(wanted - 1))
        pid = os.posix_spawn(argv[0], argv, os.environ)
        if pid == wanted:
            return pid
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return None


@pytest.mark.bpf
def test_a_reused_id_of_an_exited_child_is_not_followed(parent):
    proc, _ = parent
    with trace(TICK, pid=proc.pid, follow=True, events=False, count_by=["pid"]) as session:
        proc.stdin.write("go\nend thread\n")
        proc.stdin.flush()
        _, first, second = (int(word) for word in proc.stdout.readline().split())
        stranger = spawn_with_pid(first, [HELLO, "1000000", "stranger"])
        if stranger is None:
            pytest.skip(f"pid {first} was taken by another process each time")
        try:
            time.sleep(0.3)  # about 15 ticks
        finally:
            os.kill(stranger, 9)
            os.waitpid(stranger, 0)
    assert by_pid(session)[first] == 3  # the child's own hits, none of the stranger's


@pytest.mark.bpf
def test_without_group_dead_the_main_thread_exit_ends_the_following(parent, monkeypatch):
    """Kernels before the exit record's ``group_dead`` field: a process leaves the map when its main
    thread exits."""
    read = follow.read_format
    monkeypatch.setattr(follow, "read_format", lambda: dataclasses.replace(read(), group_dead=None))
    proc, early = parent
    with trace(TICK, pid=proc.pid, follow=True, events=False, count_by=["pid"]) as session:
        assert "group_dead" not in session.layout.text
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _, *children = (int(word) for word in proc.stdout.readline().split())
        assert session.followed() == sorted([proc.pid, early])  # the thread's exit did not end its process
        proc.stdin.write("end thread\n")  # the parent kills the early child
        proc.stdin.flush()
        deadline = time.monotonic() + 10
        while session.followed() != [proc.pid] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session.followed() == [proc.pid]
    assert [by_pid(session)[child] for child in children] == [3, 2]


@pytest.mark.bpf
def test_postgres_backends_of_a_followed_postmaster_are_counted(postgres_cluster):  # noqa: F811
    psql = postgres_cluster
    marker = "select 23 as usdtkit_follow_marker"
    probe = "usdt::postgresql:query__start"
    with trace(probe, pid=psql.postmaster, follow=True, events=False, count_by=["pid", "str(arg0)"]) as followed, \
            trace(probe, pid=psql.postmaster, events=False, count_by=["pid", "str(arg0)"]) as alone:
        psql(marker, marker, marker)  # one connection: one backend
        psql(marker, marker)
    backends = {key[1]: count for key, count in followed.counts().items() if key[2] == marker}
    assert sorted(backends.values()) == [2, 3] and psql.postmaster not in backends
    assert not alone.counts()  # the postmaster runs no query itself


@pytest.mark.bpf
def test_a_followed_trace_leaves_nothing_behind(programs_before):  # noqa: F811
    def tracepoints_of_this_process():
        out = subprocess.run(["bpftool", "-j", "perf", "show"], capture_output=True, text=True, check=True).stdout
        return sorted(e.get("tracepoint") for e in json.loads(out or "[]") if e["pid"] == os.getpid())

    fds, bpf_fds = open_fds(), bpf_fds_of_this_process()
    for _ in range(3):
        with trace(TICK, command=[HELLO, "2"], command_stdout=subprocess.DEVNULL, follow=True) as session:
            assert tracepoints_of_this_process() == ["sched_process_exit", "task_newtask"]
            session.run(duration=30)
        assert len(session.events) == 2
    assert tracepoints_of_this_process() == []
    assert (open_fds(), bpf_fds_of_this_process()) == (fds, bpf_fds)
    assert_no_new_programs(programs_before)


@pytest.mark.bpf
def test_follow_without_kernel_semaphore_counts_is_refused_in_one_line():
    result = usdtkit("count", "-F", "-c", f"{HELLO} 2", TICK, env=dict(ENV, USDTKIT_NO_SEMA_REFCNT="1"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "usdtkit: error: this kernel cannot maintain USDT semaphores in processes started after attaching")
    assert "Traceback" not in result.stderr


def test_follow_alone_is_refused_in_one_line():
    result = usdtkit("count", "-F", TICK)
    assert result.returncode == 2
    assert result.stderr.strip() == ("usdtkit: error: -F/--follow traces the descendants of -p PID or of -c CMD: "
                                     "give one of them")


def in_own_mount_namespace(script: str) -> subprocess.CompletedProcess:
    """``script`` (sh) in a mount namespace of its own, where tracefs starts unmounted."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; "
                           + script], capture_output=True, text=True, timeout=120, env=ENV)


@pytest.mark.bpf
def test_tracefs_is_mounted_when_following_needs_it():
    cli = f"{sys.executable} -m usdtkit.cli.main"
    ran = in_own_mount_namespace(f"grep -c ' - tracefs ' /proc/self/mountinfo; {cli} count -F -c '{HELLO} 2' "
                                 f"{TICK} && grep ' - tracefs ' /proc/self/mountinfo")
    assert ran.returncode == 0, ran.stderr
    before, *rest = ran.stdout.splitlines()
    assert before == "0"
    assert ["hello:tick", "2"] in [line.split() for line in rest]
    assert " /sys/kernel/tracing " in rest[-1]


@pytest.mark.bpf
def test_tracefs_that_cannot_be_mounted_is_one_clear_error():
    cli = f"{sys.executable} -m usdtkit.cli.main"
    ran = in_own_mount_namespace(f"mount -t tmpfs -o ro none /sys/kernel && {cli} count -F -c '{HELLO} 2' {TICK}")
    assert ran.returncode == 1
    assert ran.stderr.strip() == ("usdtkit: error: tracefs is not mounted and /sys/kernel/tracing is missing (No "
                                  "such file or directory): mount tracefs somewhere usdtkit looks "
                                  "(/sys/kernel/tracing) (run `usdtkit doctor` for details)")


def test_doctor_names_what_following_reads_and_only_looks():
    here = usdtkit("doctor", "--no-self-test")
    assert "OK    follow (-F)         task:task_newtask and sched:sched_process_exit" in here.stdout
    cli = f"{sys.executable} -m usdtkit.cli.main"
    ran = in_own_mount_namespace(f"{cli} doctor --no-self-test; grep -c ' - tracefs ' /proc/self/mountinfo")
    assert "WARN  follow (-F)         tracefs is not mounted (or not readable)" in ran.stdout
    assert ran.stdout.splitlines()[-1] == "0"
