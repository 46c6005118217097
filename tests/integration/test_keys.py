"""Keys of several fields on real probes (programs/keys.c): counts by pid and string equal to the
target's own account, stacks per comm, cgroup ids."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Dict, List

import pytest

from usdtkit.expr.fields import Field
from usdtkit.plan.cgroups import cgroup2_mounts, cgroup_id
from usdtkit.plan.request import HistSpec
from usdtkit.tracing.api import trace

MS = 1_000_000
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Inclusive upper bounds: sleeps never end early, so a 1 ms request is in bucket 1 unless it overruns by
# 10 ms, and a 12 ms one always in bucket 2.
BOUNDS = (MS - 1, 11 * MS, 10 * 1000 * MS)
FAST, SLOW = 1, 2


def go(target: subprocess.Popen) -> None:
    target.stdin.write(b"g")
    target.stdin.flush()


def until_done(target: subprocess.Popen) -> List[str]:
    """The lines the target printed before ``done`` (it then waits for stdin to close)."""
    lines = []
    for raw in target.stdout:
        line = raw.decode().rstrip("\n")
        if line == "done":
            return lines
        lines.append(line)
    raise AssertionError(f"the target ended without saying done (exit {target.wait()})")


def latency_hist(*by: str) -> HistSpec:
    return HistSpec(Field("latency"), "fixed", bounds=BOUNDS, by=tuple(Field.parse(f, sides=True) for f in by))


def buckets(hists) -> Dict[tuple, Dict[int, int]]:
    return {label: {i: n for i, n in h.buckets.items() if n} for label, h in hists.items()}


def usdtkit(*args: str, stdin: bytes = b"g") -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", *args], input=stdin, capture_output=True,
                            timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr.decode()
    return result


# --------------------------------------------------------------------------- counts
@pytest.mark.bpf
def test_counts_by_pid_and_string_equal_what_each_process_fired(build_c, processes):
    binary = build_c("keys.c", "-O2", "-pthread")
    first = processes([binary, "names", "50", "red", "green", "blue"])
    second = processes([binary, "names", "31", "red", "amber"])
    account = {}
    with trace(f"usdt:{binary}:keys:name", events=False, count_by=["pid", "str(arg1)"]) as session:
        for target in (first, second):
            go(target)
        for target in (first, second):
            for line in until_done(target):
                name, fired = line.split()
                account[(target.pid, name)] = int(fired)
        counts = session.counts()
    assert counts.fields == ("probe", "pid", "str(arg1)")
    assert {key[1:]: n for key, n in counts.items()} == account
    assert {key[0] for key in counts} == {"keys:name"} and counts.total() == 81


@pytest.mark.bpf
@pytest.mark.parametrize("by", ["str(arg1),pid", "tid,comm"])
def test_the_cli_shows_one_column_per_field_in_the_order_given(build_c, by):
    binary = build_c("keys.c", "-O2", "-pthread")
    command = f"{binary} names 12 red green"
    ran = usdtkit("count", "--by", by, "-c", command, "usdt::keys:name")
    doc = json.loads(usdtkit("count", "--json", "--by", by, "-c", command, "usdt::keys:name").stdout)
    fields = by.split(",")
    header, *rows = [line.split() for line in ran.stdout.decode().splitlines()]
    assert header == ["probe", *fields, "count"]
    assert doc["counts"]["fields"] == ["probe", *fields]
    if by.startswith("str"):
        # the command's own account, on stderr: "red 8", "green 4"
        account = sorted(re.findall(r"^(red|green) (\d+)$", ran.stderr.decode(), re.M))
        assert len(account) == 2 and sum(int(n) for _, n in account) == 12
        assert sorted((row[1], row[3]) for row in rows) == account
        assert sorted((key["key"][1], str(key["count"])) for key in doc["counts"]["counts"]) == account
    else:
        comm = os.path.basename(binary)[:15]  # the kernel keeps 15 bytes of the name
        assert [row[2:] for row in rows] == [[comm, "12"]] and int(rows[0][1]) > 0
        assert [key["key"][2:] + [key["count"]] for key in doc["counts"]["counts"]] == [[comm, 12]]


@pytest.mark.bpf
def test_a_key_whose_read_failed_shows_as_a_question_mark(build_c):
    binary = build_c("keys.c", "-O2", "-pthread")
    ran = usdtkit("count", "--by", "str(arg1),arg0", "-c", f"{binary} requests 3", "usdt::keys:start")
    rows = [line.split() for line in ran.stdout.decode().splitlines()[1:]]
    assert sorted(rows) == [["keys:start", "/fast", "0", "1"], ["keys:start", "/slow", "1", "1"],
                            ["keys:start", "?", "2", "1"]]


@pytest.mark.bpf
def test_stacks_by_comm(build_c, processes):
    # -O0: every function keeps a frame pointer, which is how the kernel walks a user stack
    binary = build_c("keys.c", "-O0", "-pthread")
    alpha = processes([binary, "stack", "alpha", "5"])
    beta = processes([binary, "stack", "beta", "7"])
    with trace(f"usdt:{binary}:keys:stack", events=False, count_by=["comm", "ustack"]) as session:
        for target in (alpha, beta):
            go(target)
        for target in (alpha, beta):
            until_done(target)
        counts = session.counts()
    # without a target process the pid joins the key: stacks are named per process
    assert counts.fields == ("probe", "comm", "ustack", "pid")
    by_comm = {key[1]: (key[2], key[3], n) for key, n in counts.items()}
    assert set(by_comm) == {"alpha", "beta"} and len(counts) == 2
    for comm, target, via, fired in (("alpha", alpha, "via_alpha", 5), ("beta", beta, "via_beta", 7)):
        stack, pid, n = by_comm[comm]
        assert stack.endswith(f"main;{via};fire_stack") and pid == target.pid and n == fired, by_comm[comm]


def _own_cgroup(pid: int) -> str:
    """The cgroup v2 directory of ``pid`` (its ``0::`` line)."""
    with open(f"/proc/{pid}/cgroup") as handle:
        path = next(line.split("::", 1)[1].strip() for line in handle if line.startswith("0::"))
    return os.path.join(cgroup2_mounts()[0], path.lstrip("/"))


@pytest.mark.bpf
def test_the_cgroup_key_is_the_id_of_each_process_cgroup(build_c, processes, cgroup):
    binary = build_c("keys.c", "-O2", "-pthread")
    inside = processes([binary, "names", "4", "in"])
    outside = processes([binary, "names", "6", "out"])
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as handle:
        handle.write(str(inside.pid))
    with trace(f"usdt:{binary}:keys:name", events=False, count_by=["pid", "cgroup"]) as session:
        for target in (inside, outside):
            go(target)
            until_done(target)
        counts = session.counts()
    assert {key[1:]: n for key, n in counts.items()} == {
        (inside.pid, cgroup_id(cgroup)): 4, (outside.pid, cgroup_id(_own_cgroup(outside.pid))): 6}
    assert cgroup_id(cgroup) != cgroup_id(_own_cgroup(outside.pid))
