"""Events read and decoded in C (usdtkit._native._fastevents) on real probes, and the Python path
that takes over without it (``USDTKIT_NO_NATIVE_EVENTS=1`` stands for a build without the module)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from usdtkit import trace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NATIVE = pytest.importorskip("usdtkit._native._fastevents")


def usdtkit(*args: str, native: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, USDTKIT_NO_NATIVE_EVENTS="0" if native else "1")
    return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, input="go", env=env)


def lost_of(stderr: str) -> int:
    return int(stderr.split("events lost")[0].split()[-1]) if "events lost" in stderr else 0


@pytest.fixture(scope="module")
def burst_bin(build_c):
    return build_c("latency.c", "-O2", "-pthread")


@pytest.mark.bpf
@pytest.mark.parametrize("native,fired", [(True, 1_000_000), (False, 200_000)])
def test_trace_json_of_a_burst_is_whole_and_in_order(burst_bin, native, fired):
    result = usdtkit("trace", "--json", f"usdt:{burst_bin}:app:burst", "-c", f"{burst_bin} burst {fired}",
                     native=native)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    lost = lost_of(result.stderr)
    assert len(lines) + lost == fired
    assert len(lines) >= 0.99 * fired, f"{lost} of {fired} lost with the default buffer"
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert first["args"] == [0] and first["probe"] == "app:burst" and first["comm"] == os.path.basename(burst_bin)[:15]
    assert last["args"] == [len(lines) - 1] if not lost else last["args"][0] < fired
    assert list(first) == ["probe", "pid", "tid", "timestamp_ns", "cpu", "comm", "args"]


@pytest.mark.bpf
def test_a_burst_bigger_than_the_buffer_is_counted_exactly(burst_bin):
    fired = 300_000
    result = usdtkit("trace", "--json", "--buffer-size", "64K", f"usdt:{burst_bin}:app:burst",
                     "-c", f"{burst_bin} burst {fired}")
    assert result.returncode == 0, result.stderr
    lost = lost_of(result.stderr)
    assert lost > 0, "a 64 KiB buffer held a burst of 300,000"
    assert len(result.stdout.splitlines()) + lost == fired


@pytest.mark.bpf
def test_max_events_stops_the_native_writer_exactly(burst_bin):
    result = usdtkit("trace", "--json", "-n", "1000", f"usdt:{burst_bin}:app:burst", "-c", f"{burst_bin} burst 50000")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["args"] for line in result.stdout.splitlines()] == [[i] for i in range(1000)]


@pytest.mark.bpf
@pytest.mark.parametrize("native", [True, False])
def test_the_api_delivers_the_same_events_either_way(burst_bin, processes, monkeypatch, native):
    monkeypatch.setenv("USDTKIT_NO_NATIVE_EVENTS", "0" if native else "1")
    fired = 20_000
    target = processes([burst_bin, "burst", str(fired)])
    seen = []
    with trace(f"usdt:{burst_bin}:app:burst", pid=target.pid, on_event=seen.append, keep_events=100) as session:
        assert session.native is native
        target.stdin.write(b"g")
        target.stdin.flush()
        session.run(duration=60)
        lost = session.stats()["app:burst"].lost_events
    assert [e.args for e in seen] == [(i,) for i in range(fired - lost)] if not lost else len(seen) + lost == fired
    assert list(session.events) == seen[-100:]
    assert session.delivered == len(seen)
    assert session.dropped_by_user_queue == len(seen) - 100
    assert {(e.probe, e.pid, e.comm) for e in seen} == {("app:burst", target.pid, os.path.basename(burst_bin)[:15])}
