"""The tracing CLI end to end: trace/count/hist/latency on real programs, JSON output, and clear
one-line errors (exit 1, or 2 for usage) for bad input, before anything is compiled."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def usdtkit(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.fixture(scope="module")
def hello(tmp_path_factory):
    out = tmp_path_factory.mktemp("hello") / "hello_usdt"
    subprocess.run(["gcc", "-O2", "-o", str(out), os.path.join(ROOT, "demo_apps", "hello_usdt.c")], check=True)
    return str(out)


@pytest.mark.bpf
def test_trace_json_lines_with_strings(hello):
    result = usdtkit("trace", "--json", "-s", "arg1", "-c", f"{hello} 4 tester", "usdt::hello:greet")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["args"] for e in events] == [[i, "tester"] for i in range(1, 5)]
    for event in events:
        assert event["probe"] == "hello:greet"
        assert {"probe", "pid", "tid", "timestamp_ns", "args"} <= set(event)
    assert len({e["pid"] for e in events}) == 1


@pytest.mark.bpf
def test_trace_text_output(hello):
    result = usdtkit("trace", "-s", "arg1", "-c", f"{hello} 2 x", f"usdt:{hello}:hello:greet")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].endswith('hello:greet 1 "x"')
    assert "2 events (target exited)" in result.stderr


@pytest.mark.bpf
def test_count_by_argument_and_filter(hello):
    result = usdtkit("count", "--json", "--by", "arg0", "-f", "arg0 > 3", "-c", f"{hello} 6", "usdt::hello:tick")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout.splitlines()[-1])
    keys = sorted(tuple(row["key"]) for row in doc["counts"]["counts"])
    assert keys == [("hello:tick", 4), ("hello:tick", 5), ("hello:tick", 6)]
    assert doc["stats"]["hello:tick"]["hits"] == 3


@pytest.mark.bpf
def test_hist_of_an_argument(hello):
    result = usdtkit("hist", "--json", "-v", "arg1", "-c", f"{hello} 10", "usdt::hello:tick")
    assert result.returncode == 0, result.stderr
    (hist,) = json.loads(result.stdout.splitlines()[-1])["histograms"]
    assert hist["probe"] == "hello:tick"
    # squares 1..100 in log2 buckets
    got = {(b["low"], b["high"]): b["count"] for b in hist["buckets"]}
    want = {}
    for i in range(1, 11):
        v = i * i
        bucket = (1 << (v.bit_length() - 1), 1 << v.bit_length())
        want[bucket] = want.get(bucket, 0) + 1
    assert got == want
    text = usdtkit("hist", "-v", "arg1", "-c", f"{hello} 10", "usdt::hello:tick")
    assert "@" in text.stdout and "p50" in text.stdout


@pytest.mark.bpf
def test_latency_of_a_libc_function(hello):
    result = usdtkit("latency", "--json", "-c", f"{hello} 5", "uprobe:libc:nanosleep")
    assert result.returncode == 0, result.stderr
    (hist,) = json.loads(result.stdout.splitlines()[-1])["histograms"]
    assert hist["probe"] == "nanosleep"
    assert sum(b["count"] for b in hist["buckets"]) == 5
    assert all(b["low"] >= 2**24 for b in hist["buckets"])  # 20 ms sleeps: at least 16.7 ms


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["trace", "usdt:/bin/true:a:b;c"], 2, "not a valid provider or probe name"),
        (["trace", "usdt:/bin/true:a:b", "-f", "arg0 == 1; system"], 2, "expected FIELD OP VALUE"),
        (["trace", "usdt:/bin/true:a:#include"], 2, "not a valid"),
        (["count", "--by", "arg0,\"x\"", "usdt:/bin/true:a:b"], 2, "unknown field"),
        (["trace", "usdt:/nonexistent/app:a:b"], 1, "/nonexistent/app"),
        (["trace", "usdt:/bin/true:nope:nothing"], 1, "no USDT probe"),
        (["trace", "-p", "999999999", "usdt::a:b"], 1, "999999999"),
        (["trace", "-p", "0", "usdt::a:b"], 2, "must be positive"),
        (["hist", "--linear", "1,2", "usdt:/bin/true:a:b"], 2, "LOW,HIGH,STEP"),
        (["trace", "uprobe:/bin/true:no_such_function_here"], 1, "no_such_function_here"),
        (["latency", "usdt:/bin/true:a:b"], 2, "latency needs"),
    ],
)
def test_bad_input_is_one_clear_line(args, code, message):
    result = usdtkit(*args)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
