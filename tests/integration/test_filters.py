"""Every filter form compiled, attached to a real probe and counted.

Each field the filter grammar accepts (a signed and an unsigned USDT argument, pid, tid, cpu, comm, and
retval on a uretprobe) is tried with each operator against two processes of
``programs/filter_target.c``: one session per operator, all attached at once, then the processes run.
The kernel's count must equal the count predicted from the program's own report of every hit.
A filter drops a hit before it is counted, so a session's ``hits`` is the number of hits kept.
"""
from __future__ import annotations

import contextlib
import json
import operator
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List

import pytest

from usdtkit.errors import UsageError
from usdtkit.tracing.api import trace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS: Dict[str, Callable[[object, object], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
# Three targets: (threads, base).  Thread K of a target makes K + 2 hits: 2 + (2 + 3) + 2 in all.
TARGETS = ((1, 0), (2, 20), (1, 40))


@dataclass(frozen=True)
class Hit:
    """One hit as the target reported it."""

    pid: int
    tid: int
    cpu: int
    comm: str
    arg0: int  # int32, n - 25: negative for the first target
    arg1: int  # uint64, on both sides of 2**63
    retval: int  # int64, 3n - 40
    name: str = ""  # the string argument, arg2


@dataclass(frozen=True)
class Threads:
    """What the targets said about their threads before any hit: enough to choose filter values."""

    pids: List[int]
    tids: List[int]
    cpus: List[int]
    comms: List[str]


USDT = "usdt:{binary}:ft:hit"
URETPROBE = "uretprobe:{binary}:ft_value"
# field -> (probe, the literal compared with, in filter syntax).  Each literal is a value some hits
# have, with hits on both sides, so every operator keeps some hits and drops others (cpu aside: the
# literal is the highest CPU used).  The negative literals need a signed comparison, and
# 0xffffffffffffff14 an unsigned one.
FIELDS: Dict[str, tuple] = {
    "arg0": (USDT, lambda t: "-4"),
    "arg1": (USDT, lambda t: "0xffffffffffffff14"),
    "pid": (USDT, lambda t: str(sorted(t.pids)[1])),
    "tid": (USDT, lambda t: str(sorted(t.tids)[1])),
    "cpu": (USDT, lambda t: str(max(t.cpus))),
    "comm": (USDT, lambda t: '"ft20-1"'),
    "retval": (URETPROBE, lambda t: "-37"),
}
COMM_OPS = ("==", "!=")


def _parse_value(text: str) -> object:
    try:
        return int(text, 0)
    except ValueError:
        return text.strip('"')


@dataclass
class FieldRun:
    """One field's sessions: the kernel's count and the predicted count, per operator."""

    filters: Dict[str, str]
    counted: Dict[str, int]
    predicted: Dict[str, int]
    total: int


def _start(binary: str) -> List[subprocess.Popen]:
    return [subprocess.Popen([binary, str(threads), str(base)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True) for threads, base in TARGETS]


def _threads(targets: List[subprocess.Popen]) -> Threads:
    found = Threads([], [], [], [])
    for proc, (threads, _) in zip(targets, TARGETS):
        found.pids.append(proc.pid)
        for _ in range(threads):
            word, tid, cpu, comm = proc.stdout.readline().split()
            assert word == "thread"
            found.tids.append(int(tid))
            found.cpus.append(int(cpu))
            found.comms.append(comm)
    return found


def _hits(proc: subprocess.Popen, output: str) -> List[Hit]:
    hits = []
    for line in output.splitlines():
        word, tid, cpu, comm, arg0, arg1, retval, name = line.split()
        assert word == "hit"
        hits.append(Hit(proc.pid, int(tid), int(cpu), comm, int(arg0), int(arg1), int(retval), name))
    return hits


def run_field(binary: str, field: str) -> FieldRun:
    """Trace both targets with one session per operator on ``field``, then let them run."""
    probe, literal = FIELDS[field]
    ops = COMM_OPS if field == "comm" else tuple(OPS)
    targets = _start(binary)
    try:
        threads = _threads(targets)
        value = literal(threads)
        filters = {op: f"{field} {op} {value}" for op in ops}
        counted: Dict[str, int] = {}
        hits: List[Hit] = []
        with contextlib.ExitStack() as stack:
            sessions = {op: stack.enter_context(trace(probe.format(binary=binary), events=False, filters=[text]))
                        for op, text in filters.items()}
            for proc in targets:
                proc.stdin.write("g")
                proc.stdin.close()
            for proc in targets:
                output = proc.stdout.read()
                assert proc.wait(timeout=20) == 0
                hits += _hits(proc, output)
            for op, session in sessions.items():
                (stats,) = session.stats().values()
                assert stats.lost_events == stats.lost_keys == stats.read_errors == 0
                counted[op] = stats.hits
    finally:
        for proc in targets:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            proc.stdin.close()
            proc.stdout.close()
    assert len(hits) == sum(sum(k + 2 for k in range(threads)) for threads, _ in TARGETS)
    wanted = _parse_value(value)
    predicted = {op: sum(1 for hit in hits if OPS[op](getattr(hit, field), wanted)) for op in ops}
    return FieldRun(filters, counted, predicted, len(hits))


@pytest.fixture(scope="module")
def field_run(build_c) -> Callable[[str], FieldRun]:
    """``field_run(field)``: the field's sessions, run once per module and shared by its operators."""
    binary = build_c("filter_target.c", "-pthread")
    done: Dict[str, FieldRun] = {}

    def get(field: str) -> FieldRun:
        if field not in done:
            done[field] = run_field(binary, field)
        return done[field]

    return get


CASES = [(field, op) for field in FIELDS for op in (COMM_OPS if field == "comm" else OPS)]


@pytest.mark.bpf
@pytest.mark.parametrize("field,op", CASES, ids=[f"{f}{op}" for f, op in CASES])
def test_filter_keeps_exactly_the_matching_hits(field_run, field, op):
    run = field_run(field)
    assert run.counted[op] == run.predicted[op], run.filters[op]
    if field != "cpu":
        assert 0 < run.predicted[op] < run.total, f"{run.filters[op]} does not split the hits"


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_comm_takes_only_equality(op):
    with pytest.raises(UsageError, match=f"column 6: strings take == and !=, not '{op}'"):
        trace("usdt:/bin/true:x:y", events=False, filters=[f'comm {op} "nginx"'])


@pytest.fixture(scope="module")
def hello(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("hello") / "hello_usdt"
    subprocess.run(["gcc", "-O2", "-o", str(out), os.path.join(ROOT, "demo_apps", "hello_usdt.c")], check=True)
    return str(out)


@pytest.mark.bpf
@pytest.mark.parametrize("name,hits", [('"hello_usdt"', 3), ("'hello_usdt'", 3), ('"nginx"', 0)])
def test_comm_equality_from_the_command_line(hello, name, hits):
    """The form the --help text shows, through the CLI, on the demo program."""
    result = subprocess.run(
        [sys.executable, "-m", "usdtkit.cli.main", "count", "--json", "-f", f"comm == {name}", "-c",
         f"{hello} 3", "usdt::hello:tick"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout.splitlines()[-1])
    assert doc["stats"]["hello:tick"]["hits"] == hits


def test_an_unquoted_name_is_one_line_pointing_at_it(hello):
    result = subprocess.run(
        [sys.executable, "-m", "usdtkit.cli.main", "count", "-f", "comm == hello_usdt", "-c", f"{hello} 3",
         "usdt::hello:tick"], capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "column 9: unknown name 'hello_usdt'" in result.stderr
    assert "strings are quoted" in result.stderr


@pytest.mark.bpf
@pytest.mark.parametrize("expr,timed", [("arg1 == 0", 3), ("arg1 != 0", 0), ("retval == 0", 3), ("retval != 0", 0),
                                        ("arg1 == 0 && retval != 0", 0)])
def test_a_filtered_call_is_neither_timed_nor_a_loss(hello, expr, timed):
    """In a function latency trace argument filters act at entry and retval filters at return; a call
    either drops is gone, not counted as a return without its entry or an entry without its return."""
    result = subprocess.run(
        [sys.executable, "-m", "usdtkit.cli.main", "latency", "--json", "-f", expr, "-c", f"{hello} 3",
         "uprobe:libc:nanosleep"], capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout.splitlines()[-1])
    assert sum(b["count"] for h in doc["histograms"] for b in h["buckets"]) == timed
    for stats in doc["stats"].values():
        assert stats["unmatched"] == stats["unfinished"] == 0, doc["stats"]
    assert "without a start" not in result.stderr and "without a done" not in result.stderr


def _c_div(a: int, b: int) -> int:
    """C's division: truncated toward zero."""
    quotient = abs(a) // abs(b)
    return quotient if (a < 0) == (b < 0) else -quotient


LONG_NAME = "a-name-longer-than-sixty-four-bytes-which-some-tools-cut-at-64-bytes.."
# Forms bpftrace defines otherwise (signed USDT arguments, whole strings), checked against the target's own
# account: signed division and remainder, an arithmetic shift, strings compared whole (a 70-byte literal
# needs the per-CPU buffer) and cut.
SIGNED_FORMS: Dict[str, Callable[[Hit], bool]] = {
    "arg0 / 4 == -6": lambda h: _c_div(h.arg0, 4) == -6,
    "arg0 % 4 == -1": lambda h: h.arg0 - 4 * _c_div(h.arg0, 4) == -1,
    "-7 / arg0 == 0": lambda h: h.arg0 != 0 and _c_div(-7, h.arg0) == 0,
    "arg0 >> 2 == -7": lambda h: h.arg0 >> 2 == -7,
    "arg0 < 0": lambda h: h.arg0 < 0,
    f'str(arg2) == "{LONG_NAME}"': lambda h: h.name == LONG_NAME,
    f'str(arg2) == "{LONG_NAME[:-1]}"': lambda h: h.name == LONG_NAME[:-1],
    f'str(arg2, 40) == "{LONG_NAME[:40]}"': lambda h: h.name[:40] == LONG_NAME[:40],
    'str(arg2, 5) == "alpha"': lambda h: h.name[:5] == "alpha",
    "(int64)retval / -3 >= 10": lambda h: _c_div(h.retval, -3) >= 10,
}


@pytest.mark.bpf
def test_signed_arithmetic_and_whole_strings_keep_what_the_target_reports(build_c):
    binary = build_c("filter_target.c", "-pthread")
    targets = _start(binary)
    try:
        _threads(targets)
        with contextlib.ExitStack() as stack:
            sessions = {text: stack.enter_context(trace((URETPROBE if "retval" in text else USDT).format(binary=binary),
                                                        events=False, filters=[text]))
                        for text in SIGNED_FORMS}
            for proc in targets:
                proc.stdin.write("g")
                proc.stdin.close()
            hits: List[Hit] = []
            for proc in targets:
                output = proc.stdout.read()
                assert proc.wait(timeout=20) == 0
                hits += _hits(proc, output)
            counted = {}
            for text, session in sessions.items():
                (stats,) = session.stats().values()
                assert stats.read_errors == 0, text
                counted[text] = stats.hits
    finally:
        for proc in targets:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            proc.stdout.close()
    predicted = {text: sum(1 for hit in hits if keep(hit)) for text, keep in SIGNED_FORMS.items()}
    assert counted == predicted
    # a whole string never equals its own prefix; every other form keeps some hits and drops others
    assert predicted.pop(f'str(arg2) == "{LONG_NAME[:-1]}"') == 0
    assert all(0 < n < len(hits) for n in predicted.values()), (predicted, len(hits))
