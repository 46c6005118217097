"""Probes a started command declares at run time (a runtime provider) are traced from their first hit:
through ``-c``, ``trace(command=...)`` and the ``traced_process`` fixture, in Python and in C programs, in
forked workers with -F, across reloads; a command that never declares them is one clear error, and a
tracer killed while the command waits for it lets the command go on at once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from usdtkit.errors import ProbeNotFound
from usdtkit.tracing.api import trace

from test_lifecycle import assert_no_new_programs, bpf_fds_of_this_process, open_fds, programs_before  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
N = 200

# Declares its provider at start and fires N times at once: a tracer attached after it started
# would miss hits; on stderr, whether the probe was enabled when the load returned.
SERVICE = """
import sys
from usdtkit.provider import Provider
app = Provider("rdv_svc")
order = app.probe("order", int, str)
app.load()
print("enabled at load:", int(bool(order.enabled)), file=sys.stderr)
for i in range(int(sys.argv[1])):
    order(i, f"item{i}")
"""

# The parent forks a worker, which declares a provider of its own and fires N times.
WORKER = """
import os, sys
from usdtkit.provider import Provider
pid = os.fork()
if pid == 0:
    app = Provider("rdv_worker")
    job = app.probe("job", int)
    app.load()
    for i in range(int(sys.argv[1])):
        job(i)
    os._exit(0)
print("worker", pid, file=sys.stderr)
os.waitpid(pid, 0)
"""

# Loads, fires, then declares one more probe and loads again (a new object): both are traced.
RELOAD = """
import sys
from usdtkit.provider import Provider
n = int(sys.argv[1])
app = Provider("rdv_reload")
first = app.probe("first", int)
app.load()
for i in range(n):
    first(i)
second = app.probe("second", int)
app.load()
for i in range(n):
    first(n + i)
    second(i)
"""


@pytest.fixture
def script(tmp_path):
    def write(text: str, name: str = "svc.py") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def _events(stdout: str, probe: str) -> list:
    return [e for e in map(json.loads, stdout.splitlines()) if e["probe"] == probe]


@pytest.mark.bpf
def test_cli_sees_every_hit_of_a_provider_declared_at_start(cli, script, programs_before):
    svc = script(SERVICE)
    done = cli("trace", "--json", "-c", f"{sys.executable} {svc} {N}", "usdt::rdv_svc:order", "-s", "arg1")
    assert done.returncode == 0, done.stderr
    events = _events(done.stdout, "rdv_svc:order")
    assert [e["args"] for e in events] == [[i, f"item{i}"] for i in range(N)]
    assert "enabled at load: 1" in done.stderr
    assert "Waiting for the command to declare usdt::rdv_svc:order" in done.stderr
    assert "Attached 1 site(s) of rdv_svc:order, declared by pid" in done.stderr
    assert_no_new_programs(programs_before)


@pytest.mark.bpf
def test_cli_sees_every_hit_of_a_c_program_on_libstapsdt(cli, tmp_path):
    binary = tmp_path / "runtime_provider"
    native = ROOT / "usdtkit" / "_native"
    subprocess.run(["gcc", "-O2", "-I", str(ROOT / "native"), "-o", str(binary),
                    str(ROOT / "tests" / "integration" / "programs" / "runtime_provider.c"),
                    f"-L{native}", "-lstapsdt", f"-Wl,-rpath,{native}"], check=True)
    done = cli("count", "--json", "-c", f"{binary} {N}", "usdt::rdv_c:tick", "--by", "arg1")
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout.splitlines()[-1])["counts"]["counts"]
    assert sorted(row["key"][1] for row in counts) == [10 * i for i in range(N)]
    assert all(row["count"] == 1 for row in counts)
    assert "enabled at load: 1" in done.stderr


@pytest.mark.bpf
def test_probes_found_at_start_and_declared_later_in_one_trace(cli, script):
    svc = script(SERVICE)
    done = cli("count", "--json", "-c", f"{sys.executable} {svc} {N}", "usdt::python:import__find__load__start",
               "usdt::rdv_svc:order")
    assert done.returncode == 0, done.stderr
    counts = {row["key"][0]: row["count"] for row in json.loads(done.stdout.splitlines()[-1])["counts"]["counts"]}
    assert counts["rdv_svc:order"] == N
    assert counts["python:import__find__load__start"] > 0  # imports before the provider existed


def test_traced_process_sees_every_hit(traced_process, script):
    app = traced_process([sys.executable, script(SERVICE), str(N)], "usdt::rdv_svc:order", strings=["arg1"])
    assert app.wait(timeout=60) == 0
    app.expect("rdv_svc:order").fired(times=N).with_args(0, "item0", times=1).with_args(N - 1, f"item{N - 1}")
    assert app.session.waiting == ()


@pytest.mark.bpf
def test_a_forked_worker_is_caught_with_follow_and_named_without(cli, script):
    worker = script(WORKER)
    done = cli("trace", "--json", "-F", "-c", f"{sys.executable} {worker} {N}", "usdt::rdv_worker:job")
    assert done.returncode == 0, done.stderr
    events = _events(done.stdout, "rdv_worker:job")
    assert [e["args"] for e in events] == [[i] for i in range(N)]
    child = int(done.stderr.split("worker ")[1].split()[0])
    assert {e["pid"] for e in events} == {child}

    done = cli("trace", "--json", "-c", f"{sys.executable} {worker} 3", "usdt::rdv_worker:job")
    assert done.returncode == 1
    assert not done.stdout
    last = done.stderr.strip().splitlines()[-1]
    child = int(done.stderr.split("worker ")[1].split()[0])
    assert last == (f"usdtkit: error: {sys.executable} exited (status 0) without declaring "
                    f"usdt::rdv_worker:job (pid {child}, a child of the command, declared rdv_worker: follow "
                    "children with -F (follow=True))")


@pytest.mark.bpf
def test_a_reload_is_traced_too_and_results_add_up():
    with trace("usdt::rdv_reload:first", "usdt::rdv_reload:second", command=[sys.executable, "-c", RELOAD, str(N)],
               count_by=["arg0"], events=False) as session:
        assert session.run(duration=60) == "target exited"
    counts = session.counts()
    assert {key: n for key, n in counts.items() if key[0] == "rdv_reload:first"} == {
        ("rdv_reload:first", i): 1 for i in range(2 * N)}
    assert {key: n for key, n in counts.items() if key[0] == "rdv_reload:second"} == {
        ("rdv_reload:second", i): 1 for i in range(N)}
    assert session.stats()["rdv_reload:first"].hits == 2 * N
    assert len(session.attachments) == 3  # first in the first object; first and second in the second


@pytest.mark.bpf
def test_a_command_that_never_declares_is_one_error_after_its_results(cli):
    done = cli("count", "-c", f"{sys.executable} -c pass", "usdt::rdv_never:order", "usdt::python:gc__start")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"usdtkit: error: {sys.executable} exited (status 0) without declaring usdt::rdv_never:order "
        "(probes of a runtime provider are caught when the command loads it with usdtkit.provider or "
        "usdtkit's libstapsdt)")
    assert "python:gc__start" in done.stdout  # what was collected is printed first


@pytest.mark.bpf
def test_a_tracer_killed_while_the_command_waits_lets_it_go_on_at_once(script, tmp_path):
    """The command waits for a stopped tracer (its thread cannot answer); SIGKILL closes the tracer's end
    and the load returns at once, long before the rendezvous's time limit."""
    marks = tmp_path / "marks"
    go = tmp_path / "go"
    child = script(f"""
import os, signal, sys, time
from usdtkit.provider import Provider
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # its keeper stops it after the tracer died: note first
app = Provider("rdv_killed")
app.probe("order", int)
with open({str(marks)!r}, "a") as out:
    print("ready", file=out, flush=True)
    while not os.path.exists({str(go)!r}):
        time.sleep(0.01)
    app.load()
    print("loaded", time.time(), file=out, flush=True)
""")
    tracer = subprocess.Popen([sys.executable, "-m", "usdtkit.cli.main", "trace", "-c", f"{sys.executable} {child}",
                               "usdt::rdv_killed:order"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, PYTHONPATH=str(ROOT), USDTKIT_RENDEZVOUS_TIMEOUT="60"))
    try:
        deadline = time.time() + 60
        while not (marks.exists() and "ready" in marks.read_text()):
            assert time.time() < deadline and tracer.poll() is None
            time.sleep(0.01)
        tracer.send_signal(signal.SIGSTOP)
        go.touch()
        time.sleep(1.0)  # the command announces and waits for the stopped tracer
        assert "loaded" not in marks.read_text()
        killed = time.time()
        tracer.kill()
        tracer.wait(timeout=10)
        while "loaded" not in marks.read_text():
            assert time.time() < killed + 10
            time.sleep(0.01)
        loaded = float(marks.read_text().split("loaded ")[1].split()[0])
        assert loaded - killed < 1.0
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()


@pytest.mark.bpf
def test_nothing_is_left_behind(script, programs_before):
    fds = open_fds()
    bpf_fds = bpf_fds_of_this_process()
    with trace("usdt::rdv_svc:order", command=[sys.executable, script(SERVICE), "10"], events=False) as session:
        session.run(duration=60)
    assert session.stats()["rdv_svc:order"].hits == 10
    assert open_fds() == fds and bpf_fds_of_this_process() == bpf_fds
    assert_no_new_programs(programs_before)


@pytest.mark.bpf
def test_a_declaration_the_trace_cannot_read_is_one_clear_error(cli, script):
    done = cli("count", "-f", "arg3 > 0", "-c", f"{sys.executable} {script(SERVICE)} 5", "usdt::rdv_svc:order")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "usdtkit: error: rdv_svc, declared by pid "
        f"{done.stderr.split('declared by pid ')[1].split(':')[0]}: filter on arg3: rdv_svc:order has 2 argument(s)")
    assert "Traceback" not in done.stderr


@pytest.mark.bpf
def test_an_answer_after_the_wait_is_reported(script):
    """With no wait at all, the command goes on before the trace attached: the trace says so, and later
    hits are seen."""
    later = script(SERVICE + "import time\ntime.sleep(3)\nfor i in range(5):\n    order(100 + i, 'later')\n")
    done = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "count", "--by", "arg0", "-c",
                           f"{sys.executable} {later} 5", "usdt::rdv_svc:order"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT), USDTKIT_RENDEZVOUS_TIMEOUT="0"))
    assert done.returncode == 0, done.stderr
    assert "enabled at load: 0" in done.stderr
    assert "stopped waiting for the trace" in done.stderr and "may be missing" in done.stderr
    assert all(f"rdv_svc:order  {100 + i}" in done.stdout for i in range(5)), done.stdout


def test_declared_later_false_refuses_what_the_executable_lacks_at_once(script):
    started = time.monotonic()
    with pytest.raises(ProbeNotFound, match="no USDT probe rdv_svc:order"):
        trace("usdt::rdv_svc:order", command=[sys.executable, script(SERVICE), "1"], declared_later=False)
    assert time.monotonic() - started < 30


@pytest.mark.bpf
def test_declared_later_true_waits_even_for_a_provider_the_executable_has(script):
    """A runtime provider named like the interpreter's own: only the declared one is attached."""
    shadow = script("""
import sys
from usdtkit.provider import Provider
app = Provider("python")
gc_start = app.probe("gc__start", int)
app.load()
for _ in range(int(sys.argv[1])):
    gc_start(77)
import gc
gc.collect()
""")
    with trace("usdt::python:gc__start", command=[sys.executable, shadow, str(N)], declared_later=True,
               count_by=["arg0"], events=False) as session:
        session.run(duration=60)
    assert dict(session.counts()) == {("python:gc__start", 77): N}  # not the collector's own gc__start
