"""Keys of several fields on real probes (programs/keys.c, programs/latency.c): counts by pid and string
equal to the target's own account, stacks per comm, cgroup ids, latency histograms split by values of
the start probe and of the done probe, keys of two fields, and every lost start counted."""
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


# --------------------------------------------------------------------------- latency keys
@pytest.mark.bpf
def test_latency_by_a_start_string_and_a_done_number(build_c, processes):
    binary = build_c("keys.c", "-O2", "-pthread")
    target = processes([binary, "requests", "12"])
    with trace(f"usdt:{binary}:keys:start", f"usdt:{binary}:keys:done", pid=target.pid, events=False,
               latency=True, pair_keys=("arg0", "arg0"), hist=latency_hist("start.str(arg1)", "arg1")) as session:
        go(target)
        until_done(target)
        hists, stats = session.histograms(), session.stats()
    # ids 0-2 end with 200, 3-5 with 404...; routes cycle /fast, /slow and one that cannot be read (None)
    assert buckets(hists) == {
        ("keys:done", "/fast", 200): {FAST: 2}, ("keys:done", "/slow", 200): {SLOW: 2},
        ("keys:done", None, 200): {FAST: 2}, ("keys:done", "/fast", 404): {FAST: 2},
        ("keys:done", "/slow", 404): {SLOW: 2}, ("keys:done", None, 404): {FAST: 2}}
    assert stats["keys:start"].read_errors == 4 and stats["keys:start"].hits == 12
    assert stats["keys:done"].hits == 12 and not stats["keys:done"].losses()


@pytest.mark.bpf
def test_the_cli_names_start_fields_and_shows_a_failed_read(build_c):
    binary = build_c("keys.c", "-O2", "-pthread")
    result = usdtkit("latency", "-k", "arg0", "--by", "start.str(arg1),arg1", "--linear", f"0,{24 * MS},{12 * MS}",
                     "-c", f"{binary} requests 6", "usdt::keys:start", "usdt::keys:done")
    shown = dict(re.findall(r"^keys:done \[(.*)\] latency \(ns\): (\d+) values", result.stdout.decode(), re.M))
    assert shown == {f"start.str(arg1)={route}, arg1={status}": "1"
                     for route in ("/fast", "/slow", "?") for status in (200, 404)}
    assert "keys:start: 2 argument or string reads failed" in result.stderr.decode()


@pytest.mark.bpf
def test_function_latency_by_an_entry_argument(build_c, processes):
    binary = build_c("latency.c", "-O2", "-pthread")
    target = processes([binary, "sleeps", "1", "20", "1", "5"])
    hist = HistSpec(Field("latency"), "fixed", bounds=(MS - 1, 4 * MS, 19 * MS, 10 * 1000 * MS),
                    by=(Field("arg", 0), Field("retval")))
    with trace(f"uprobe:{binary}:sleep_ms", pid=target.pid, events=False, latency=True, hist=hist) as session:
        go(target)
        session.run(duration=30)
        hists = session.histograms()
    # sleep_ms(ms) returns ms: the entry's argument and the return value agree
    assert buckets(hists) == {("sleep_ms", 1, 1): {1: 2}, ("sleep_ms", 5, 5): {2: 1}, ("sleep_ms", 20, 20): {3: 1}}


@pytest.mark.bpf
def test_a_key_of_two_fields_pairs_ids_that_repeat_across_threads(build_c, processes):
    binary = build_c("keys.c", "-O2", "-pthread")
    target = processes([binary, "threads", "8"])
    with trace(f"usdt:{binary}:keys:start", f"usdt:{binary}:keys:done", pid=target.pid, events=False, latency=True,
               pair_keys=("arg0&tid", "arg0&tid"), hist=latency_hist("start.str(arg1)", "arg1")) as session:
        go(target)
        until_done(target)
        hists, stats = session.histograms(), session.stats()
    # both threads use ids 0-7 at the same time; thread 0 sleeps 1 ms per request, thread 1 12 ms
    assert buckets(hists) == {("keys:done", "/t0", 0): {FAST: 8}, ("keys:done", "/t1", 1): {SLOW: 8}}
    assert not stats["keys:done"].losses() and not stats["keys:start"].losses()


# --------------------------------------------------------------------------- losses
@pytest.mark.bpf
def test_a_start_whose_key_cannot_be_read_never_pairs(build_c, processes):
    binary = build_c("keys.c", "-O2", "-pthread")
    target = processes([binary, "lostkey"])
    with trace(f"usdt:{binary}:keys:lost_start", f"usdt:{binary}:keys:done", pid=target.pid, events=False,
               latency=True, pair_keys=("arg0", "arg0"), hist="latency") as session:
        go(target)
        until_done(target)
        hists, stats = session.histograms(), session.stats()
    # the start's key read failed (a page never touched); the done's key is 0, which must not match it
    assert sum(h.total for h in hists.values()) == 0
    assert stats["keys:lost_start"].read_errors == 1 and stats["keys:done"].unmatched == 1


@pytest.mark.bpf
def test_starts_evicted_from_a_full_map_are_counted(build_c, processes):
    binary = build_c("keys.c", "-O2", "-pthread")
    fired = 70_000  # more starts than the map of starts holds (65536)
    target = processes([binary, "flood", str(fired)])
    with trace(f"usdt:{binary}:keys:start", f"usdt:{binary}:keys:done", pid=target.pid, events=False,
               latency=True, pair_keys=("arg0", "arg0"), hist="latency", hist_by="start.str(arg1)") as session:
        go(target)
        until_done(target)
        hists, stats = session.histograms(), session.stats()
    done = stats["keys:done"]
    assert list(hists) == [("keys:done", "/flood")]
    assert stats["keys:start"].hits == fired and done.hits == hists["keys:done", "/flood"].total
    assert done.hits + done.unmatched == fired and done.unmatched >= fired - 65536
    assert done.unfinished == done.unmatched  # each evicted start is one start without its done


@pytest.mark.bpf
def test_stacks_of_a_command_that_ends_at_once_are_named(cli):
    """A command that runs for a few ms is gone before the first poll: its mappings are read as soon as
    it runs its program, so its frames are named."""
    hello = os.path.join(ROOT, "demo_apps", "build", "hello_usdt")
    result = cli("count", "--json", "--by", "ustack", "-c", f"{hello} 1", "usdt::hello:tick")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout.splitlines()[-1])["counts"]["counts"]
    assert row["key"][1].split(";")[-1] == "main" and row["count"] == 1, row
