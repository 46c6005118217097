"""``usdtkit pycalls`` on real Python processes: counts equal the calls made, times match known sleeps.

The timed source is exercised on ``fixtures/pycalls_target.py``, which fires usdtkit.instrument's
``pycalls`` probes by hand around known calls (``Shop.checkout`` sleeps itself and calls ``lookup``
twice); the fallback on Debian's ``/usr/bin/python3.11``, whose own ``python:function__return`` fires at
every return; and the message for a process with neither.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "tests" / "fixtures" / "pycalls_target.py"
PYTHON311 = "/usr/bin/python3.11"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
MS = 1_000_000

pytestmark = pytest.mark.bpf


def start_target(processes, *options: str) -> subprocess.Popen:
    """The hand-instrumented target, once its provider is loaded (it works once a tracer attaches)."""
    proc = processes([sys.executable, str(TARGET), *options], env=ENV, text=True)
    assert proc.stdout.readline() == "ready\n", proc.stderr.read()
    return proc


def pycalls(cli, *args: str) -> subprocess.CompletedProcess:
    result = cli("pycalls", *args)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result


def first_line(function: str) -> int:
    """The first line of the target's ``function``: its decorator's, as ``co_firstlineno`` counts."""
    lines = TARGET.read_text().splitlines()
    (index,) = [i for i, text in enumerate(lines) if text.strip().startswith(f"def {function}(")]
    assert lines[index - 1].strip() == "@timed"
    return index  # the decorator's line, counted from 1


def by_name(doc: dict) -> Dict[str, dict]:
    rows = {row["function"]: row for row in doc["functions"]}
    assert len(rows) == len(doc["functions"])
    return rows


def test_pid_calls_total_and_self_times_are_the_ones_the_process_measured(cli, processes):
    target = start_target(processes, "--rounds", "4", "--inner-ms", "10", "--outer-ms", "5", "--collections", "2")
    doc = json.loads(pycalls(cli, "--json", "-p", str(target.pid)).stdout)  # ends as the target exits
    assert target.wait(timeout=30) == 0
    assert doc["source"] == "pycalls" and doc["stats"]["pycalls:function__return"]["hits"] == 12
    rows = by_name(doc)
    assert list(rows) == ["__main__:Shop.checkout", "__main__:lookup"]  # slowest in all first
    checkout, lookup = rows["__main__:Shop.checkout"], rows["__main__:lookup"]
    assert (checkout["calls"], lookup["calls"]) == (4, 8)
    assert checkout["file"] == lookup["file"] == str(TARGET)
    assert (checkout["line"], lookup["line"]) == (first_line("checkout"), first_line("lookup"))
    # 8 sleeps of 10 ms; a sleep overshoots by scheduling only (generous on a loaded machine)
    assert 80 * MS <= lookup["total_ns"] < 80 * MS * 1.5
    assert lookup["self_ns"] == lookup["total_ns"]  # it calls no timed function
    # self is the total less the time in timed callees: the two sums are the process's own numbers
    assert checkout["self_ns"] == checkout["total_ns"] - lookup["total_ns"]
    assert 20 * MS <= checkout["self_ns"] < 20 * MS * 1.5 + 5 * MS
    assert 0 < checkout["self_ns"] <= checkout["total_ns"]
    # a 10 ms call is in the log2 bucket [8.4 ms, 16.8 ms); a 25 ms one in [16.8 ms, 33.6 ms)
    assert lookup["p50_ns"] == 1 << 24 and lookup["p99_ns"] in (1 << 24, 1 << 25)
    assert checkout["p50_ns"] in (1 << 25, 1 << 26) and checkout["p99_ns"] >= checkout["p50_ns"]
    assert doc["gc"]["collections"] >= 2 and doc["gc"]["total_ns"] > 0


def test_text_is_a_table_by_total_time_cut_at_top(cli, processes):
    target = start_target(processes, "--rounds", "2", "--inner-ms", "2", "--outer-ms", "1")
    result = pycalls(cli, "--top", "1", "--no-gc", "-p", str(target.pid))
    lines = result.stdout.splitlines()
    assert lines[0].startswith("source: pycalls:function__return of usdtkit.instrument")
    assert lines[1].split() == ["function", "file:line", "calls", "total", "self", "mean", "p50<=", "p99<="]
    assert lines[2].split()[:3] == ["__main__:Shop.checkout", f"{TARGET}:{lines[2].split()[1].rsplit(':', 1)[1]}",
                                    "2"]
    assert lines[3] == "... and 1 more functions (2 in all; --top 0 shows every row)"
    assert not any(line.startswith("gc:") for line in lines)  # --no-gc
    assert "Attached 1 site(s) of 1 probe(s)" in result.stderr and "(target exited)" in result.stderr


def test_by_thread_splits_each_function_by_thread(cli, processes):
    target = start_target(processes, "--threads", "2", "--rounds", "2", "--inner-ms", "1", "--outer-ms", "1")
    doc = json.loads(pycalls(cli, "--json", "--by-thread", "--no-gc", "-p", str(target.pid)).stdout)
    calls: Dict[Tuple[str, int], int] = {(r["function"], r["tid"]): r["calls"] for r in doc["functions"]}
    tids = {tid for _, tid in calls}
    assert len(tids) == 2 and len(calls) == 4
    for tid in tids:
        assert (calls[("__main__:Shop.checkout", tid)], calls[("__main__:lookup", tid)]) == (2, 4)
    assert all(r["self_ns"] <= r["total_ns"] for r in doc["functions"])


def test_profiling_a_service_leaves_its_probes_off(processes, read_semaphore):
    from usdtkit.tracing.pycalls import PyCalls

    target = start_target(processes, "--forever", "--inner-ms", "1", "--outer-ms", "1")
    with open(f"/proc/{target.pid}/maps") as maps:
        (provider,) = {line.split()[-1] for line in maps if "/pycalls-" in line and line.rstrip().endswith(".so")}
    python = os.path.realpath(f"/proc/{target.pid}/exe")

    def semaphores():
        return (read_semaphore(target.pid, provider, "function__return"),
                read_semaphore(target.pid, python, "gc__start"), read_semaphore(target.pid, python, "gc__done"))

    for _ in range(2):  # profiled now and then: every time from a clean state
        with PyCalls(pid=target.pid) as profile:
            assert semaphores() == (1, 1, 1)
            profile.session.run(duration=0.3)
        assert semaphores() == (0, 0, 0)  # both programs detached, while this process lives on
        assert {r.function for r in profile.functions()} == {"__main__:Shop.checkout", "__main__:lookup"}
        assert profile.source.name == "pycalls" and profile.gc() is not None
    assert target.poll() is None


NATIVE_SCRIPT = '''
import sys
def leaf(n):
    return n + 1
def middle(n):
    return leaf(n) + leaf(n)
print("ready", flush=True)
sys.stdin.readline()
for i in range(10):
    middle(i)
print("done", flush=True)
sys.stdin.readline()
'''


def _native_rows(doc: dict, script: Path) -> Dict[str, dict]:
    return {row["function"]: row for row in doc["functions"] if row["file"] == str(script)}


def test_cpython_own_probe_gives_calls_per_function_without_times(cli, processes, tmp_path):
    script = tmp_path / "calls.py"
    script.write_text(NATIVE_SCRIPT)
    target = processes([PYTHON311, str(script)], text=True)
    assert target.stdout.readline() == "ready\n"
    tracer = subprocess.Popen([sys.executable, "-m", "usdtkit.cli.main", "pycalls", "--json", "-p", str(target.pid)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        attached = tracer.stderr.readline()
        assert attached.startswith("Attached"), attached + tracer.stderr.read()
        target.stdin.write("go\n")
        target.stdin.flush()
        assert target.stdout.readline() == "done\n"
        target.stdin.write("end\n")
        target.stdin.flush()
        out, err = tracer.communicate(timeout=60)  # ends as the target exits
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
    assert tracer.returncode == 0, err
    doc = json.loads(out)
    assert doc["source"] == "python"
    rows = _native_rows(doc, script)
    # the line is the one each function returned from: CPython's probe gives no first line
    assert {name: (r["calls"], r["return_line"]) for name, r in rows.items()} == {
        "leaf": (20, 4), "middle": (10, 6), "<module>": (1, 12)}
    assert all(set(r) == {"function", "file", "return_line", "calls"} for r in doc["functions"])  # no times
    (note,) = [line for line in err.splitlines() if line.startswith("note:")]
    assert "python -m usdtkit.instrument" in note and "python:function__entry cannot time" in note


def test_a_command_is_profiled_from_its_first_call(cli, tmp_path):
    script = tmp_path / "calls.py"
    script.write_text(NATIVE_SCRIPT.replace("sys.stdin.readline()", "pass"))
    result = pycalls(cli, "--json", "-c", f"{PYTHON311} {script}")
    doc = json.loads(result.stdout)
    assert doc["source"] == "python"
    assert {name: r["calls"] for name, r in _native_rows(doc, script).items()} == {
        "leaf": 20, "middle": 10, "<module>": 1}
    assert "ready" in result.stderr  # the command's output goes to stderr


def test_a_command_declaring_the_pycalls_provider_is_timed(cli):
    # -d bounds the wait: without the pycalls probes enabled the target never starts its work
    result = cli("pycalls", "--json", "--no-gc", "--source", "pycalls", "-d", "10", "-c",
                 f"{sys.executable} {TARGET} --rounds 2")
    doc = json.loads(result.stdout)
    assert doc["source"] == "pycalls"
    assert {r["function"]: r["calls"] for r in doc["functions"]} == {"__main__:Shop.checkout": 2, "__main__:lookup": 4}


PYENV_312 = "/root/.pyenv/versions/3.12.1/bin/python3.12"  # built without --with-dtrace: no probes


@pytest.mark.parametrize("argv", [["sleep", "60"], [PYENV_312, "-c", "import time; time.sleep(60)"]],
                         ids=["sleep", "python-without-probes"])
def test_neither_source_says_how_to_instrument(cli, processes, argv):
    if not os.path.exists(argv[0]) and "/" in argv[0]:
        pytest.skip(f"{argv[0]} is not installed")
    target = processes(argv)
    result = cli("pycalls", "-p", str(target.pid))
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line == (f"usdtkit: error: pid {target.pid} has neither usdtkit's pycalls probes nor CPython's "
                    "python:function__return: run it under usdtkit's instrumentation: `python -m usdtkit.instrument "
                    "script.py`, or usdtkit.instrument.enable() in the program, or USDTKIT_INSTRUMENT=1 in its "
                    "environment")


def test_bad_options_are_one_line_errors(cli):
    for args, words in ((["-p", "1", "-c", "true"], "not allowed with"), ([], "one of the arguments -p/--pid"),
                        (["-c", ""], "-c needs a command"), (["-p", "x"], "'x' is not a number")):
        result = cli("pycalls", *args)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and words in result.stderr, result.stderr



def _folded(path: Path) -> Dict[Tuple[str, ...], int]:
    from usdtkit.views.stacks import parse_folded

    return parse_folded(path.read_text().splitlines())


def test_a_flame_graph_of_call_paths_weighs_each_path_by_its_self_time(cli, processes, tmp_path):
    target = start_target(processes, "--threads", "2", "--rounds", "3", "--inner-ms", "2", "--outer-ms", "1")
    svg, folded = tmp_path / "calls.svg", tmp_path / "calls.folded"
    doc = json.loads(pycalls(cli, "--json", "--no-gc", "--flamegraph", str(svg), "--folded", str(folded), "-p",
                             str(target.pid)).stdout)
    rows = by_name(doc)
    checkout, lookup = rows["__main__:Shop.checkout"], rows["__main__:lookup"]
    assert (checkout["calls"], lookup["calls"]) == (6, 12)  # the rows come from the same events
    assert checkout["self_ns"] == checkout["total_ns"] - lookup["total_ns"]
    paths = _folded(folded)
    assert paths == {("__main__:Shop.checkout",): checkout["self_ns"],
                     ("__main__:Shop.checkout", "__main__:lookup"): lookup["self_ns"]}
    from usdtkit.views.flamegraph import frames_of

    drawn = {(name, depth): width for name, width, depth, _ in frames_of(svg.read_text())}
    assert drawn[("__main__:Shop.checkout", 1)] == checkout["total_ns"]  # as wide as the time in and below it


def test_a_flame_graph_of_a_command_from_its_first_call(cli, tmp_path):
    folded = tmp_path / "calls.folded"
    result = cli("pycalls", "--json", "--no-gc", "--folded", str(folded), "-d", "10", "-c",
                 f"{sys.executable} {TARGET} --rounds 2")
    assert result.returncode == 0, result.stderr
    assert {r["function"]: r["calls"] for r in json.loads(result.stdout)["functions"]} == {
        "__main__:Shop.checkout": 2, "__main__:lookup": 4}
    assert set(_folded(folded)) == {("__main__:Shop.checkout",), ("__main__:Shop.checkout", "__main__:lookup")}


def test_a_flame_graph_needs_the_pycalls_probes(cli, processes):
    result = cli("pycalls", "--source", "python", "--folded", "/dev/null", "-p", str(os.getpid()))
    assert result.returncode == 2 and "call paths need usdtkit.instrument's pycalls probes" in result.stderr
