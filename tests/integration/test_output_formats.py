"""trace and count as CSV, and the three clocks of trace, on a real program: the same events as JSON."""
from __future__ import annotations

import csv
import datetime
import io
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELLO = os.path.join(ROOT, "demo_apps", "build", "hello_usdt")  # greets every 20 ms


def usdtkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.bpf
def test_csv_rows_hold_what_json_says_even_for_hostile_strings():
    name = 'a,"b"\nc'  # a comma, quotes and a line break: one CSV field
    args = ("-s", "arg1", "-c", f"{HELLO} 3 '{name}'", "usdt::hello:greet")
    rows = list(csv.reader(io.StringIO(usdtkit("trace", "--csv", "--timestamps", "boot", *args).stdout)))
    events = [json.loads(line) for line in usdtkit("trace", "--json", *args).stdout.splitlines()]
    assert rows[0] == ["time", "probe", "pid", "tid", "cpu", "comm", "arg0", "arg1", "retval", "latency_ns"]
    assert [(r[1], int(r[6]), r[7], r[8], r[9]) for r in rows[1:]] == \
        [(e["probe"], e["args"][0], e["args"][1], "", "") for e in events] == \
        [("hello:greet", i, name, "", "") for i in (1, 2, 3)]
    assert all(float(r[0]) > 0 and r[5] == "hello_usdt" for r in rows[1:])


@pytest.mark.bpf
def test_the_three_clocks():
    def times(*extra: str) -> list:
        result = usdtkit("trace", *extra, "-c", f"{HELLO} 3", "usdt::hello:tick")
        assert result.returncode == 0, result.stderr
        return [line.split()[0] for line in result.stdout.splitlines()]

    before = datetime.datetime.now()
    wall = times()  # the default in text: the time of day
    after = datetime.datetime.now()
    for text in wall:
        at = datetime.datetime.combine(before.date(), datetime.time.fromisoformat(text))
        assert before - datetime.timedelta(seconds=1) <= at <= after + datetime.timedelta(seconds=1), (text, before)
    relative = [float(t) for t in times("--timestamps", "relative")]
    assert relative[0] == 0.0 and all(0.015 <= b - a <= 0.2 for a, b in zip(relative, relative[1:])), relative
    boot = [float(t) for t in times("--timestamps", "boot")]
    with open("/proc/uptime") as handle:
        up = float(handle.read().split()[0])
    assert all(0 < t <= up + 1 for t in boot), (boot, up)
    iso = list(csv.reader(io.StringIO(usdtkit("trace", "--csv", "-c", f"{HELLO} 1", "usdt::hello:tick").stdout)))
    stamp = datetime.datetime.fromisoformat(iso[1][0])
    assert stamp.tzinfo is not None and abs((stamp - datetime.datetime.now().astimezone()).total_seconds()) < 60


@pytest.mark.bpf
def test_count_csv_has_a_row_per_key():
    result = usdtkit("count", "--csv", "--by", "arg0", "-c", f"{HELLO} 4", "usdt::hello:tick")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["probe", "arg0", "count"]
    assert sorted(rows[1:]) == [["hello:tick", str(i), "1"] for i in (1, 2, 3, 4)]


def test_json_and_csv_together_are_refused():
    for command in ("trace", "count"):
        result = usdtkit(command, "--json", "--csv", "usdt:/bin/true:a:b")
        assert result.returncode == 2 and result.stderr.strip().endswith("--json and --csv: choose one"), result
    result = usdtkit("count", "--csv", "-i", "1", "usdt:/bin/true:a:b")
    assert result.returncode == 2 and "--csv writes one table of the whole trace: leave out -i" in result.stderr
