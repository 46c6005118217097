"""usdtkit.instrument, for real: unmodified programs run under ``python -m usdtkit.instrument`` on every
Python here (3.11, and 3.12+ where installed), traced by pid while they run.

The program (``programs/pycalls_workload.py``) makes known calls on command; the trace must count
exactly those calls, pair every return with its entry at the same depth on the same thread, time
known sleeps, and see nothing of the standard library.  Hooks must be off until a tracer attaches,
on within a bounded time after, and off again after it leaves; a forked worker gets its own
provider and can be traced by its own pid.
"""
from __future__ import annotations

import collections
import glob
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import pytest

from usdtkit.tracing.api import trace

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = Path(__file__).parent / "programs" / "pycalls_workload.py"
ENTRY = "usdt::pycalls:function__entry"
RETURN = "usdt::pycalls:function__return"
HARNESS = {"heartbeat", "handle", "hooks_on"}  # the workload's own loop: counts vary
EXPECTED = {
    "nested": {"outer": 1, "middle": 2, "inner": 2},
    "fib": {"run_fib": 1, "fib": 177},
    "order": {"run_order": 1, "Order.__init__": 1, "Order.save": 1, "Order.check": 3},
    "generator": {"consume": 1, "numbers": 5},
    "exceptions": {"recover": 1, "deep": 3, "fail": 3},
    "async": {"run_async": 1, "gather": 2, "step": 8},
    "threads": {"threaded": 1, "worker": 4, "leaf": 20},
    "sleeps": {"sleeps": 1, "sleepy": 2},
    "early": {"run_early": 1, "early_work": 1, "early_leaf": 3},
}
ATTACH_TO_HOOKS_ON = 1.0  # seconds: the watcher polls every 0.1 s


def _pythons() -> List[str]:
    """This interpreter (3.11), and every 3.12+ found on PATH or under pyenv."""
    found = {sys.executable: None}
    candidates = [shutil.which(f"python3.{minor}") for minor in range(12, 20)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3")))
    versions = set()
    for path in filter(None, candidates):
        out = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] >= (3, 12), sys.version[:4])"],
                             capture_output=True, text=True)
        newer, version = out.stdout.split() if out.returncode == 0 else ("False", "")
        if newer == "True" and version not in versions:
            versions.add(version)
            found[path] = None
    return list(found)


PYTHONS = _pythons()


def _version(python: str) -> str:
    return "py" + subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="session")
def instrument_env(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """Environment for an instrumented program on any Python: this checkout, and the PyPI stapsdt module
    (one pure Python file) that usdtkit.provider needs, copied alone so no 3.11 build leaks in."""
    import stapsdt

    folder = tmp_path_factory.mktemp("stapsdt")
    shutil.copy(stapsdt.__file__, folder / "stapsdt.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("USDTKIT_INSTRUMENT")}
    return dict(env, PYTHONPATH=f"{ROOT}{os.pathsep}{folder}", PYTHONDONTWRITEBYTECODE="1")


class Program:
    """The workload under ``python -m usdtkit.instrument``, driven line by line."""

    def __init__(self, python: str, env: Dict[str, str], *options: str) -> None:
        self.proc = subprocess.Popen([python, "-m", "usdtkit.instrument", *options, str(WORKLOAD)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, cwd=str(ROOT))
        words = self.read().split()
        assert words[:1] == ["ready"], words
        self.pid = int(words[1])

    def read(self, timeout: float = 30) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no answer from the workload within {timeout}s"
        line = self.proc.stdout.readline()
        assert line, f"the workload ended: {self.proc.stderr.read()}"
        return line.strip()

    def ask(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> str:
        """End it (EOF on stdin) and return its stderr, which must hold no error."""
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        assert self.proc.returncode == 0, err
        return err


@pytest.fixture(params=PYTHONS, ids=_version)
def python(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def program(python: str, instrument_env: Dict[str, str]) -> Iterator[Program]:
    started = Program(python, instrument_env)
    yield started
    assert "Traceback" not in started.close()


def _name(event) -> str:
    function = event.args[0]
    assert function.startswith("__main__:"), function  # default scope: nothing of the standard library
    return function.split(":", 1)[1]


def _wait_for(session, name: str, timeout: float = ATTACH_TO_HOOKS_ON + 5) -> float:
    """Seconds until ``name`` returned in the trace (the hooks are on)."""
    start = time.monotonic()
    session.run(duration=timeout, until=lambda: any(e.args[0].endswith(":" + name) for e in session.events),
                interval=0.02)
    assert any(e.args[0].endswith(":" + name) for e in session.events), f"{name} never seen in {timeout}s"
    return time.monotonic() - start


def _check_pairs(events: Sequence) -> None:
    """On each thread, every return closes the last open entry: same function, same depth; depth is
    the number of open entries.  Events before the thread's first return of a function it was seen
    entering may belong to frames half seen (the hooks turning on): the check starts after it."""
    by_tid: Dict[int, List] = collections.defaultdict(list)
    for event in events:
        by_tid[event.tid].append(event)
    for tid, seq in by_tid.items():
        stack: List[Tuple[str, int]] = []
        started = False
        for event in seq:
            function, depth = event.args[0], event.args[3]
            if event.probe.endswith("entry"):
                started = started or depth == 0
                if started:
                    assert depth == len(stack), (tid, function, depth, stack)
                    stack.append((function, depth))
            elif started:
                assert stack and stack.pop() == (function, depth), (tid, function, depth, stack)
        assert stack == [], (tid, stack)


def _returns(events: Sequence) -> collections.Counter:
    return collections.Counter(_name(e) for e in events if e.probe.endswith("return"))


@pytest.mark.bpf
def test_every_call_is_counted_and_paired(program: Program):
    with trace(ENTRY, RETURN, pid=program.pid, strings=["arg0"]) as session:
        _wait_for(session, "heartbeat")
        for command in EXPECTED:
            assert program.ask(command) == "done"
        session.run(duration=0.3)
        events = list(session.events)
        lost = sum(s.lost_events for s in session.stats().values())
    assert lost == 0
    returns = _returns(events)
    entries = collections.Counter(_name(e) for e in events if e.probe.endswith("entry"))
    for command, calls in EXPECTED.items():
        for function, count in calls.items():
            assert (command, function, returns[function]) == (command, function, count)
            assert (command, function, entries[function]) == (command, function, count)
    expected_names = {name for calls in EXPECTED.values() for name in calls}
    assert set(returns) - expected_names <= HARNESS
    _check_pairs(events)
    # the threads ran on threads of their own, the early one too
    tids = {e.tid for e in events if _name(e) in ("leaf", "early_leaf")}
    assert len(tids) == 5 and program.pid not in tids


@pytest.mark.bpf
def test_total_and_self_time_match_known_sleeps(program: Program):
    with trace(RETURN, pid=program.pid, strings=["arg0"]) as session:
        _wait_for(session, "heartbeat")
        assert program.ask("sleeps") == "done"
        session.run(duration=0.3)
        times = {}
        for event in session.events:
            times.setdefault(_name(event), []).append(event.args[4:6])
    sleepy = times["sleepy"]
    ((outer_total, outer_self),) = times["sleeps"]
    assert len(sleepy) == 2
    for total, own in sleepy:
        assert 50e6 <= total < 90e6 and own == total  # time.sleep(0.05); no instrumented callee
    assert outer_total >= sum(total for total, _ in sleepy)
    assert 0 <= outer_self < 10e6 and outer_self == outer_total - sum(total for total, _ in sleepy)


@pytest.mark.bpf
def test_hooks_are_off_until_a_tracer_attaches_and_after_it_leaves(program: Program):
    assert program.ask("state") == "off off"
    time.sleep(0.3)  # several polls of the watcher: still off
    assert program.ask("state") == "off off"
    with trace(RETURN, pid=program.pid, strings=["arg0"]) as session:
        took = _wait_for(session, "heartbeat")
        assert took < ATTACH_TO_HOOKS_ON
        # the main thread, and a thread started before the attach (it looks every 10 ms)
        _until(lambda: program.ask("state"), "on on", 0.5)
    _until(lambda: program.ask("state"), "off off", ATTACH_TO_HOOKS_ON)


def _until(read, expected: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (got := read()) != expected:
        assert time.monotonic() < deadline, f"{got!r}, not {expected!r}, after {timeout}s"
        time.sleep(0.01)


@pytest.mark.bpf
def test_a_forked_worker_has_its_own_provider_and_is_traced_by_its_pid(program: Program, tmp_path: Path):
    def child_state() -> str:
        return (tmp_path / "state").read_text() if (tmp_path / "state").exists() else ""

    with trace(RETURN, pid=program.pid, strings=["arg0"]) as parent:
        _wait_for(parent, "heartbeat")
        child = int(program.ask(f"fork {tmp_path}"))  # forked while its parent is traced
        try:
            _until(lambda: "written" if child_state() else "", "written", 10)
            time.sleep(0.5)  # five polls of its watcher
            assert child_state() == "off"  # the parent's tracer does not turn the child's hooks on
            with trace(RETURN, pid=child, strings=["arg0"]) as session:
                _wait_for(session, "child_heartbeat")
                _until(child_state, "on", 0.5)  # it writes its state after each heartbeat
                (tmp_path / "go").touch()
                _until(lambda: str((tmp_path / "done").exists()), "True", 10)
                session.run(duration=0.2)
                events = list(session.events)
            assert {e.pid for e in events} == {child}
            assert _returns(events)["child_work"] == 7 and _returns(events)["inner"] == 7
            assert all(e.args[3] == 0 for e in events if _name(e) == "child_work")
            parent.run(duration=0.2)
            assert {e.pid for e in parent.events} == {program.pid}
        finally:
            (tmp_path / "quit").touch()
            _wait_exited(child)


def _wait_exited(pid: int, timeout: float = 10) -> None:
    """Until ``pid`` (a child of the workload, reaped by nobody before the workload ends) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(") ", 1)[1].startswith(("Z", "X")):
                    return
        except OSError:
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"forked worker {pid} did not exit")


PACKAGE_MAIN = '''\
import json, os, select, sys
from shop import helpers

def main():
    print("ready", os.getpid(), flush=True)
    while not select.select([sys.stdin], [], [], 0.01)[0]:
        helpers.tick()
    sys.stdin.readline()
    for i in range(5):
        helpers.used(i)
    helpers._hidden()
    json.dumps({"a": [1, 2]})
    print("done", flush=True)
    sys.stdin.readline()

main()
'''
HELPERS = '''\
def tick():
    pass

def _private(i):
    return i

def used(i):
    return _private(i)

def _hidden():
    pass
'''


@pytest.mark.bpf
@pytest.mark.parametrize("options,wanted", [
    ((), {"shop.helpers:used": 5, "shop.helpers:_private": 5, "shop.helpers:_hidden": 1}),
    (("--include", "shop.*", "--exclude", "*:_*"), {"shop.helpers:used": 5}),
    (("--include", "json:*"), {"json:dumps": 1}),
], ids=["default", "include-exclude", "stdlib-included"])
def test_the_scope_decides_which_functions_fire(python: str, instrument_env: Dict[str, str], tmp_path: Path,
                                               options: Tuple[str, ...], wanted: Dict[str, int]):
    """``-m shop`` from its folder: by default the package's own code and not json; --include replaces
    that, --exclude takes out."""
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "__main__.py").write_text(PACKAGE_MAIN)
    (tmp_path / "shop" / "helpers.py").write_text(HELPERS)
    proc = subprocess.Popen([python, "-m", "usdtkit.instrument", *options, "-m", "shop"], cwd=str(tmp_path),
                            env=instrument_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline().split()[1])
        with trace(RETURN, pid=pid, count_by=["str(arg0)"]) as session:
            if "json:*" in options:
                time.sleep(ATTACH_TO_HOOKS_ON)  # nothing of this program fires while it waits
            else:
                session.run(duration=ATTACH_TO_HOOKS_ON + 5, interval=0.02,
                            until=lambda: bool(session.counts()))  # tick() returns: the hooks are on
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "done\n"
            session.run(duration=0.2)
            counts = {key[1]: n for key, n in session.counts().items()}
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()
    counts.pop("shop.helpers:tick", None)
    assert counts == wanted


@pytest.mark.bpf
@pytest.mark.skipif(shutil.which("bpftrace") is None, reason="bpftrace is not installed")
def test_bpftrace_counts_the_calls_too(instrument_env: Dict[str, str]):
    program = Program(sys.executable, instrument_env)
    try:
        with open(f"/proc/{program.pid}/maps") as maps:
            (path,) = {line.split()[-1] for line in maps if "/pycalls-" in line}
        script = (f'BEGIN {{ printf("attached\\n"); }} usdt:{path}:pycalls:function__return '
                  f'/pid == {program.pid}/ {{ @[str(arg0)] = count(); }}')
        tracer = subprocess.Popen(["bpftrace", "-p", str(program.pid), "-e", script], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert "attached" in tracer.stdout.readline() + tracer.stdout.readline()
            _until(lambda: program.ask("state"), "on on", ATTACH_TO_HOOKS_ON)
            assert program.ask("fib") == "done" and program.ask("generator") == "done"
        finally:
            tracer.send_signal(signal.SIGINT)
            out, err = tracer.communicate(timeout=60)
        counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"@\[(\S+)\]: (\d+)", out)}
        assert counts["__main__:fib"] == 177 and counts["__main__:numbers"] == 5, out + err
        _until(lambda: program.ask("state"), "off off", ATTACH_TO_HOOKS_ON)
    finally:
        assert "Traceback" not in program.close()


@pytest.mark.bpf
def test_a_return_whose_entry_is_not_on_top_ends_the_frames_above_it(monkeypatch, tmp_path: Path):
    """What a thread that switches stacks (greenlets) does to the per-thread stacks of
    usdtkit/instrument/calls.py, driven directly here: the frames above the returning one are
    dropped, and a return with no entry fires nothing."""
    from usdtkit.instrument.calls import make_calls
    from usdtkit.instrument.instrumentation import declare

    monkeypatch.setenv("USDTKIT_RUNTIME_DIR", str(tmp_path / "run"))
    provider, entry, ret = declare()
    try:
        enter, leave = make_calls(entry, ret)
        a, b, c = ((name, b"file.py", line) for line, name in enumerate((b"m:a", b"m:b", b"m:c"), 1))
        with trace(f"usdt:{provider.path}:pycalls:function__entry", f"usdt:{provider.path}:pycalls:function__return",
                   pid=os.getpid(), strings=["arg0"]) as session:
            enter(a)
            enter(b)
            leave(a)  # b's return was never seen
            leave(b)  # nothing open for b any more
            enter(c)
            leave(c)
            session.run(duration=0.2)
            got = [(e.probe.split("__")[1], e.args[0], e.args[3]) for e in session.events]
        assert got == [("entry", "m:a", 0), ("entry", "m:b", 1), ("return", "m:a", 0),
                       ("entry", "m:c", 0), ("return", "m:c", 0)]
    finally:
        provider.close()


FORKS = '''\
import os, sys, threading
if sys.argv[1:] == ["with-a-thread"]:
    threading.Thread(target=threading.Event().wait, daemon=True).start()
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print("forked")
'''


@pytest.mark.parametrize("argument", ["", "with-a-thread"])
def test_forking_warns_as_without_usdtkit(python: str, instrument_env: Dict[str, str], tmp_path: Path,
                                          argument: str):
    """3.12+ warns when a multi-threaded process forks: the watcher thread must not make a program
    that has no threads of its own warn, nor hide the warning from one that has."""
    (tmp_path / "forks.py").write_text(FORKS)

    def stderr(*prefix: str) -> List[str]:
        ran = subprocess.run([python, *prefix, "forks.py", argument], cwd=str(tmp_path), env=instrument_env,
                             capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0 and ran.stdout == "forked\n", ran.stderr
        return [re.sub(r"pid=\d+", "pid=N", line) for line in ran.stderr.splitlines()]

    assert stderr("-m", "usdtkit.instrument") == stderr()


@pytest.mark.bpf
def test_pycalls_on_a_running_instrumented_program_counts_and_times_its_calls(program: Program):
    """The main use: a program started once under usdtkit.instrument, profiled by pid while it runs."""
    profiler = subprocess.Popen([sys.executable, "-m", "usdtkit.cli.main", "pycalls", "--json", "--no-gc", "-p",
                                 str(program.pid), "-d", "6"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.monotonic() + 5
        while program.ask("state") != "on on":  # attached, and the hooks on
            assert time.monotonic() < deadline and profiler.poll() is None, "pycalls did not attach"
            time.sleep(0.02)
        for command in EXPECTED:
            assert program.ask(command) == "done"
        out, err = profiler.communicate(timeout=60)
    finally:
        if profiler.poll() is None:
            profiler.kill()
            profiler.wait()
    assert profiler.returncode == 0, err
    doc = json.loads(out)
    assert doc["source"] == "pycalls"
    rows = {row["function"].split(":", 1)[1]: row for row in doc["functions"]}
    for calls in EXPECTED.values():
        for function, count in calls.items():
            assert rows[function]["calls"] == count, (function, rows[function])
    sleepy = rows["sleepy"]  # two calls of time.sleep(0.05)
    assert 100e6 <= sleepy["total_ns"] < 180e6 and sleepy["self_ns"] == sleepy["total_ns"]
    assert 2 ** 25 <= sleepy["p50_ns"] <= 2 ** 27  # the log2 bucket holding 50 ms
    assert rows["sleeps"]["self_ns"] == rows["sleeps"]["total_ns"] - sleepy["total_ns"]


@pytest.mark.bpf
def test_pycalls_of_a_command_sees_its_calls_from_the_first(instrument_env: Dict[str, str], tmp_path: Path):
    """-c: the command waits in its provider's load until the probes are attached, and the hooks are on
    before its first line runs."""
    script = tmp_path / "first.py"
    script.write_text("def leaf(i):\n    return i\n\n\ndef main():\n    return sum(leaf(i) for i in range(50))\n\n\n"
                      "main()\n")
    env = dict(os.environ, PYTHONPATH=instrument_env["PYTHONPATH"])
    result = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "pycalls", "--json", "--no-gc", "-c",
                             f"{sys.executable} -m usdtkit.instrument {script}"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    calls = {row["function"]: row["calls"] for row in json.loads(result.stdout)["functions"]}
    assert calls == {"__main__:<module>": 1, "__main__:main": 1, "__main__:leaf": 50,
                     "__main__:main.<locals>.<genexpr>": 51}
