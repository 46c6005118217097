"""The tracing CLI end to end: trace/count/hist/latency on real programs, JSON output, and clear
one-line errors (exit 1, or 2 for usage) for bad input, before anything is compiled."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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
        (["trace", "usdt:/bin/true:a:b", "-f", "arg0 == 1; system"], 2, "column 10: unexpected character ';'"),
        (["trace", "usdt:/bin/true:a:#include"], 2, "not a valid"),
        (["count", "--by", "arg0,\"x\"", "usdt:/bin/true:a:b"], 2, "unknown field"),
        (["trace", "usdt:/nonexistent/app:a:b"], 1, "/nonexistent/app"),
        (["trace", "usdt:/bin/true:nope:nothing"], 1, "no USDT probe"),
        (["trace", "-p", "999999999", "usdt::a:b"], 1, "999999999"),
        (["trace", "-p", "0", "usdt::a:b"], 2, "must be positive"),
        (["hist", "--linear", "1,2", "usdt:/bin/true:a:b"], 2, "LOW,HIGH,STEP"),
        (["trace", "uprobe:/bin/true:no_such_function_here"], 1, "no_such_function_here"),
        (["latency", "usdt:/bin/true:a:b"], 2, "latency needs"),
        (["trace", "--buffer-size", "64Q", "usdt:/bin/true:a:b"], 2, "'64Q' is not a size"),
        (["trace", "--buffer-size", "4G", "usdt:/bin/true:a:b"], 2, "more than the 1 GiB"),
    ],
)
def test_bad_input_is_one_clear_line(args, code, message):
    result = usdtkit(*args)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def latency_bin(tmp_path_factory):
    out = tmp_path_factory.mktemp("latency") / "latency"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(out),
                    os.path.join(ROOT, "tests", "integration", "programs", "latency.c")], check=True)
    return str(out)


def usdtkit_with_stdin(*args, stdin="go", timeout=120):
    return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, input=stdin, env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.bpf
def test_max_events_is_exact_and_losses_are_reported(latency_bin):
    result = usdtkit_with_stdin("trace", "-n", "5", f"usdt:{latency_bin}:app:burst", "-c", f"{latency_bin} burst 200000")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5
    assert "stopped after 5 events" in result.stderr
    assert "dropped" not in result.stderr  # no false in-memory queue warning
    flood = usdtkit_with_stdin("trace", "--json", f"usdt:{latency_bin}:app:burst", "-c", f"{latency_bin} burst 300000")
    delivered = len(flood.stdout.splitlines())
    if delivered < 300000:  # the reader fell behind: every loss must be reported, on stderr
        lost = int(flood.stderr.split("events lost")[0].split()[-1])
        assert delivered + lost == 300000


@pytest.mark.bpf
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_a_trace_under_load(latency_bin, sig):
    proc = subprocess.Popen([sys.executable, "-m", "usdtkit.cli.main", "trace", f"usdt:{latency_bin}:app:burst",
                             "-c", f"{latency_bin} burst 4000000000"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    proc.stdin.write("go")
    proc.stdin.flush()
    assert proc.stderr.readline().startswith("Attached")
    time.sleep(1)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{sig.name} did not stop a trace under load")
    assert proc.returncode == 0
    assert ("interrupted" if sig == signal.SIGINT else "terminated") in err
    time.sleep(0.2)
    assert subprocess.run(["pgrep", "-f", f"{latency_bin} burst"], capture_output=True).returncode == 1


@pytest.mark.bpf
def test_log2_histograms_of_zero_and_negative_values(build_c):
    binary = build_c("usdt_args.c", "-O2")
    # demo:args arg0 is an int8 0, -1, -2, -3; demo:tick arg0 is 0, 1, 2000, 3
    signed = usdtkit_with_stdin("hist", "--json", "-v", "arg0", "-c", f"{binary} 4", f"usdt:{binary}:demo:args")
    (hist,) = json.loads(signed.stdout.splitlines()[-1])["histograms"]
    assert [(b["low"], b["high"], b["count"]) for b in hist["buckets"]] == [(-2**63, 0, 3), (0, 1, 1)]
    plain = usdtkit_with_stdin("hist", "--json", "-v", "arg0", "-c", f"{binary} 4", f"usdt:{binary}:demo:tick")
    (hist,) = json.loads(plain.stdout.splitlines()[-1])["histograms"]
    assert [(b["low"], b["count"]) for b in hist["buckets"]] == [(0, 1), (1, 1), (2, 1), (1024, 1)]


@pytest.mark.bpf
def test_linear_histogram_keeps_the_partial_last_bucket(build_c):
    binary = build_c("usdt_args.c", "-O2")
    out = usdtkit_with_stdin("hist", "--json", "-v", "arg1", "--linear", "60000,60010,3", "-c", f"{binary} 12",
                             f"usdt:{binary}:demo:args")
    (hist,) = json.loads(out.stdout.splitlines()[-1])["histograms"]
    got = [(b["low"], b["high"], b["count"]) for b in hist["buckets"]]
    assert got == [(60000, 60003, 3), (60003, 60006, 3), (60006, 60009, 3), (60009, 60010, 1),
                   (60010, 2**64, 2)]


@pytest.mark.bpf
def test_deep_recursion_is_never_mispaired(latency_bin):
    # the kernel stops probing returns past 64 nested uretprobes: the 64 outer levels are timed
    out = usdtkit_with_stdin("latency", "--json", "--linear", "0,200000000,1000000", "-c",
                             f"{latency_bin} recurse 100 1", f"uprobe:{latency_bin}:nest")
    doc = json.loads(out.stdout.splitlines()[-1])
    (hist,) = doc["histograms"]
    assert sum(b["count"] for b in hist["buckets"]) == 64
    assert min(b["low"] for b in hist["buckets"]) >= 36_000_000  # level 64 from the top sleeps 37 times
    assert doc["stats"]["nest"]["unmatched"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["count", "--by", "arg0,arg0", "usdt:BIN:demo:tick"], "names a field twice"),
        (["count", "--by", "arg3", "usdt:BIN:demo:tick"], "demo:tick has 1 argument"),
        (["hist", "-v", "retval", "usdt:BIN:demo:tick"], "is not a uretprobe"),
        (["count", "--by", "str(arg1)", "usdt:BIN:demo:args"], "is not a pointer"),
        (["trace", "-s", "arg0", "usdt:BIN:demo:tick"], "no traced probe has a pointer argument 0"),
        (["latency", "--key", "str(arg0)", "usdt:BIN:demo:tick", "usdt:BIN:demo:global"], "use argN, pid, tid"),
        (["count", "--by", "latency", "usdt:BIN:demo:tick"], "only latency traces"),
        (["count", "uprobe:BIN:main+0x3"], "cannot check that it starts an instruction"),
        (["count", "uretprobe:BIN:0x1"], "must be placed at the start of a function"),
        (["trace", "-c", "'unterminated", "usdt::demo:tick"], "No closing quotation"),
        (["trace", "-c", "", "usdt::demo:tick"], "needs a command"),
    ],
)
def test_fields_a_probe_cannot_provide_are_refused(build_c, args, message):
    binary = build_c("usdt_args.c", "-O2")
    result = usdtkit(*[a.replace("BIN", binary) for a in args])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_thread_id_is_refused_with_its_process(tmp_path):
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)
        tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
        result = usdtkit("count", "-p", str(tids[0]), "usdt::python:function__entry")
        assert result.returncode == 2
        assert f"is a thread of process {proc.pid}" in result.stderr
    finally:
        proc.kill()
        proc.wait()
