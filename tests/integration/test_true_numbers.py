"""Every number true and every loss said, on real probes: latency keys never pair two processes, losses
of every kind are counted and printed, strings are kept long and marked when cut, durations hold under
sustained load, and intervals print what changed in each interval."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from usdtkit.tracing.api import trace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELLO = os.path.join(ROOT, "demo_apps", "build", "hello_usdt")
MS = 1_000_000

pytestmark = pytest.mark.bpf


def usdtkit(*args: str, stdin: str = "go", timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", *args], capture_output=True, text=True,
                          input=stdin, timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.fixture(scope="module")
def latency_bin(build_c):
    return build_c("latency.c", "-O2", "-pthread")


def test_a_latency_key_never_pairs_two_processes(latency_bin):
    """Two processes use the same request ids at the same time: each done meets its own start."""
    start, done = (f"usdt:{latency_bin}:app:request__{side}" for side in ("start", "done"))
    with trace(start, done, latency=True, pair_keys=("arg0", "arg0"), hist="latency") as session:
        targets = [subprocess.Popen([latency_bin, "pairs", "1", "30"], stdin=subprocess.PIPE) for _ in range(2)]
        for target in targets:
            target.stdin.write(b"g")
        for target in targets:
            target.stdin.close()
        for target in targets:
            assert target.wait(timeout=30) == 0
        session.run(duration=0.2)
    hist = session.histograms()["app:request__done"]
    stats = session.stats()["app:request__done"]
    assert hist.total == 60 and stats.unmatched == 0 and stats.unfinished == 0, (hist.buckets, stats)
    # each request sleeps at least 1 ms between its start and its done
    assert min(hist.bounds(i)[1] for i in hist.buckets if hist.buckets[i]) > MS


def test_returns_past_the_kernels_nesting_limit_are_said(latency_bin):
    result = usdtkit("latency", "--json", f"uprobe:{latency_bin}:nest", "-c", f"{latency_bin} recurse 100 0")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout.splitlines()[-1])
    (hist,) = doc["histograms"]
    timed = sum(b["count"] for b in hist["buckets"])
    assert timed < 100 and doc["stats"]["nest"]["unfinished"] == 100 - timed
    assert f"{100 - timed} starts without a done/return" in result.stderr


def test_dones_without_starts_are_said(latency_bin):
    # start and done swapped: every "done" comes before its "start"
    result = usdtkit("latency", "--key", "arg0", f"usdt:{latency_bin}:app:request__done",
                     f"usdt:{latency_bin}:app:request__start", "-c", f"{latency_bin} pairs 1 10")
    assert result.returncode == 0, result.stderr
    assert "10 done/return hits without a start" in result.stderr
    assert "10 starts without a done/return" in result.stderr


def test_failed_string_reads_are_counted_and_shown_as_unknown():
    # nanosleep's second argument (rem) is NULL in hello_usdt: not a readable string
    result = usdtkit("trace", "--json", "-s", "arg1", "-c", f"{HELLO} 2", "uprobe:libc:nanosleep")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(events) >= 2 and all(e["args"][1] is None for e in events)
    assert f"{len(events)} argument or string reads failed" in result.stderr


def test_a_cut_count_table_says_how_much_is_left(latency_bin):
    result = usdtkit("count", "--by", "arg0", f"usdt:{latency_bin}:app:burst", "-c", f"{latency_bin} burst 200")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert len(rows) == 1 + 50 + 1 and rows[-1].startswith("... and 150 more rows (200 in all")
    every = usdtkit("count", "--top", "0", "--by", "arg0", f"usdt:{latency_bin}:app:burst", "-c",
                    f"{latency_bin} burst 200")
    assert len(every.stdout.splitlines()) == 201


def test_long_strings_are_kept_and_a_cut_is_marked():
    name = "n" * 150
    result = usdtkit("trace", "--json", "-s", "arg1", "-c", f"{HELLO} 1 {name}", "usdt::hello:greet")
    (event,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert event["args"][1] == "n" * 128 + "\u2026" and event["truncated"] == ["arg1"]
    text = usdtkit("trace", "-s", "arg1", "-c", f"{HELLO} 1 {name}", "usdt::hello:greet")
    assert '"' + "n" * 128 + '"\u2026' in text.stdout or ("n" * 128 + "\u2026") in text.stdout
    whole = usdtkit("trace", "--json", "--string-size", "150", "-s", "arg1", "-c", f"{HELLO} 1 {name}",
                    "usdt::hello:greet")
    (event,) = [json.loads(line) for line in whole.stdout.splitlines()]
    assert event["args"][1] == name and "truncated" not in event
    keys = usdtkit("count", "--json", "--by", "str(arg1)", "-c", f"{HELLO} 2 {name}", "usdt::hello:greet")
    rows = json.loads(keys.stdout.splitlines()[-1])["counts"]["counts"]
    assert rows == [{"key": ["hello:greet", "n" * 128 + "\u2026"], "count": 2}]


def test_duration_holds_under_sustained_load(latency_bin):
    started = time.monotonic()
    result = usdtkit("trace", "-d", "1", f"usdt:{latency_bin}:app:burst", "-c", f"{latency_bin} burst 4000000000",
                     timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "events (done)" in result.stderr
    assert took < 8, took  # start-up, one second of tracing, the summary


def test_run_duration_holds_under_sustained_load(latency_bin):
    target = subprocess.Popen([latency_bin, "burst", "4000000000"], stdin=subprocess.PIPE)
    try:
        with trace(f"usdt:{latency_bin}:app:burst", pid=target.pid, keep_events=0) as session:
            target.stdin.write(b"g")
            target.stdin.flush()
            started = time.monotonic()
            session.run(duration=0.3)
            took = time.monotonic() - started
        assert took < 1.0, took
        assert session.delivered > 0
    finally:
        target.kill()
        target.wait()


@pytest.mark.parametrize("option", [["-i", "nan"], ["-d", "nan"], ["-i", "1e-9"], ["-d", "inf"], ["-i", "-1"]])
def test_absurd_times_are_refused(option):
    result = usdtkit("count", *option, "usdt::hello:tick", "-c", f"{HELLO} 1")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_intervals_print_what_changed_and_cumulative_prints_totals():
    per = usdtkit("count", "--json", "-i", "0.25", "usdt::hello:tick", "-c", f"{HELLO} 40")
    docs = [json.loads(line) for line in per.stdout.splitlines()]
    counts = [sum(r["count"] for r in d["counts"]["counts"]) if d["counts"] else 0 for d in docs]
    assert len(docs) >= 3 and sum(counts) == 40 and max(counts) < 40, counts
    total = usdtkit("count", "--json", "-i", "0.25", "--cumulative", "usdt::hello:tick", "-c", f"{HELLO} 40")
    docs = [json.loads(line) for line in total.stdout.splitlines()]
    running = [sum(r["count"] for r in d["counts"]["counts"]) if d["counts"] else 0 for d in docs]
    assert running == sorted(running) and running[-1] == 40, running


FORKING = """
import os, sys, time
def work():
    return 1
child = os.fork()
if child == 0:
    sys.stdin.readline()
    end = time.monotonic() + 4
    while time.monotonic() < end:
        work()
    os._exit(0)
os.waitpid(child, 0)
"""


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3.11"), reason="needs Debian's python3.11")
def test_a_parent_whose_children_do_the_work_gets_a_note():
    """Like PostgreSQL's postmaster: the traced process waits while a forked child fires the probes."""
    parent = subprocess.Popen(["/usr/bin/python3.11", "-c", FORKING], stdin=subprocess.PIPE)
    try:
        tracer = subprocess.Popen([sys.executable, "-m", "usdtkit.cli.main", "count", "-d", "1.5", "-p",
                                   str(parent.pid), "usdt::python:function__return"], stderr=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
        assert tracer.stderr.readline().startswith("Attached")
        parent.stdin.write(b"go\n")
        parent.stdin.flush()
        out, err = tracer.communicate(timeout=60)
        assert tracer.returncode == 0, err
        assert "(no hits)" in out
        assert f"note: no hits in pid {parent.pid}; it has 1 child process(es)" in err
        assert "not traced" in err
    finally:
        parent.kill()
        parent.wait()


def test_a_full_length_comm_filter_loads_and_matches(tmp_path):
    """15 bytes is the longest name a process has; comparing it must not exceed what the verifier takes."""
    long_name = tmp_path / "abcdefghijklmno"
    long_name.write_bytes(open(HELLO, "rb").read())
    long_name.chmod(0o755)
    for name, hits in (("abcdefghijklmno", 3), ("abcdefghijklmnp", 0)):
        result = usdtkit("count", "--json", "-f", f"comm == \"{name}\"", "-c", f"{long_name} 3", "usdt::hello:tick")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout.splitlines()[-1])
        assert sum(r["count"] for r in doc["counts"]["counts"]) == hits


def test_keys_too_big_for_the_bpf_stack_are_built_in_a_scratch_slot():
    """A 200-byte string key (with comm) does not fit the 512-byte BPF stack beside the arguments: the
    program builds it in a per-CPU slot, for counts and for histograms alike."""
    name = "k" * 180
    keys = usdtkit("count", "--json", "--string-size", "200", "--by", "str(arg1),comm", "-c", f"{HELLO} 2 {name}",
                   "usdt::hello:greet")
    assert keys.returncode == 0, keys.stderr
    rows = json.loads(keys.stdout.splitlines()[-1])["counts"]["counts"]
    assert rows == [{"key": ["hello:greet", name, "hello_usdt"], "count": 2}]
    hist = usdtkit("hist", "--json", "--string-size", "200", "-v", "arg0", "--by", "str(arg1),comm", "-c",
                   f"{HELLO} 3 {name}", "usdt::hello:greet")
    assert hist.returncode == 0, hist.stderr
    (doc,) = json.loads(hist.stdout.splitlines()[-1])["histograms"]
    assert doc["by"] == [name, "hello_usdt"] and sum(b["count"] for b in doc["buckets"]) == 3
