"""``usdtkit top`` in a real terminal (a tmux pane of a private tmux server): the live table shows the
probe's rate, fits the window as it changes size, and ``q`` or Ctrl-C end it cleanly.  Without a
terminal the same table is printed every interval (the README's and --help's examples cover that)."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "demo_apps" / "build" / "hello_usdt"  # fires hello:tick 50 times a second


class Pane:
    """One tmux pane of a tmux server of its own, running a command."""

    def __init__(self, command: str, tmp: Path, width: int = 100, height: int = 20) -> None:
        self.socket = f"usdtkit-test-{os.getpid()}-{time.monotonic_ns()}"
        self.status = tmp / "status"
        wrapped = f"{command}; echo exit=$? > {self.status}; sleep 60"
        self.tmux("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height), wrapped)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True,
                              timeout=20).stdout

    def screen(self) -> List[str]:
        return self.tmux("capture-pane", "-p", "-t", "top").splitlines()

    def wait(self, condition: Callable[[List[str]], bool], timeout: float = 30) -> List[str]:
        deadline = time.monotonic() + timeout
        lines = self.screen()
        while not condition(lines):
            if time.monotonic() > deadline:
                raise AssertionError("the screen never showed it:\n" + "\n".join(lines))
            time.sleep(0.1)
            lines = self.screen()
        return lines

    def exit_status(self, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while not self.status.exists():
            assert time.monotonic() < deadline, "usdtkit top did not end:\n" + "\n".join(self.screen())
            time.sleep(0.1)
        return self.status.read_text().strip()

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=20)


@pytest.fixture
def pane(tmp_path):
    assert shutil.which("tmux"), "this test runs usdtkit top in tmux: install tmux"
    panes: List[Pane] = []

    def start(*args: str, width: int = 100, height: int = 20, command: str = "top") -> Pane:
        command = " ".join([f"PYTHONPATH={ROOT}", "TERM=screen", sys.executable, "-m", "usdtkit.cli.main", command,
                            *(shlex.quote(a) for a in args)])
        panes.append(Pane(command, tmp_path, width, height))
        return panes[-1]

    yield start
    for p in panes:
        p.close()


def _row(lines: List[str], probe: str) -> List[str]:
    found = [line.split() for line in lines if line.startswith(probe + " ")]
    return found[0] if found else []


def _rate(lines: List[str], probe: str) -> float:
    row = _row(lines, probe)
    return float(row[3]) if len(row) > 3 and re.fullmatch(r"[\d.]+", row[3]) else 0.0


@pytest.mark.bpf
def test_the_live_table_shows_rates_and_fits_the_window(pane, processes):
    target = processes([str(HELLO), "1000000", "top"], stdout=subprocess.DEVNULL)
    p = pane("-p", str(target.pid), "-i", "0.5", "-l", "uprobe:libc:nanosleep", "usdt::hello:tick", width=100)
    lines = p.wait(lambda s: _rate(s, "hello:tick") > 0 and _rate(s, "nanosleep") > 0)
    assert lines[0].startswith(f"usdtkit top - pid {target.pid} - 2 probe(s) - every 0.5 s")
    assert lines[1].split() == ["PROBE", "COMM", "PID", "HITS/S", "TOTAL", "P50", "P99"]
    tick, sleep = _row(lines, "hello:tick"), _row(lines, "nanosleep")
    assert tick[1:3] == ["hello_usdt", str(target.pid)] and 30 <= float(tick[3]) <= 70, lines
    assert sleep[5:7] == ["33.6", "ms"], lines  # 20 ms sleeps: the log2 bucket up to 2^25 ns
    # narrower: the probe and command names give way, every column stays (tmux would cut the right ones)
    p.tmux("resize-window", "-t", "top", "-x", "62", "-y", "12")

    def ours(lines: List[str]) -> List[List[str]]:
        return [line.split() for line in lines[2:] if str(target.pid) in line.split()]

    narrow = p.wait(lambda s: len(s[1].split()) == 7 and len(ours(s)) == 2 and "~" in s[2])
    assert narrow[1].split() == ["PROBE", "COMM", "PID", "HITS/S", "TOTAL", "P50", "P99"], narrow
    assert sorted(row[-4:] for row in ours(narrow))[0] == ["33.6", "ms", "33.6", "ms"], narrow
    p.tmux("send-keys", "-t", "top", "q")
    assert p.exit_status() == "exit=0"


@pytest.mark.bpf
def test_ctrl_c_ends_the_live_view_and_detaches(pane, processes, read_semaphore):
    target = processes([str(HELLO), "1000000", "top"], stdout=subprocess.DEVNULL)
    p = pane("-p", str(target.pid), "-i", "0.3")
    p.wait(lambda s: _rate(s, "hello:tick") > 0 and _rate(s, "hello:greet") > 0)
    assert read_semaphore(target.pid, str(HELLO), "greet") == 1  # every USDT probe of the executable
    p.tmux("send-keys", "-t", "top", "C-c")
    assert p.exit_status() == "exit=0"
    assert read_semaphore(target.pid, str(HELLO), "greet") == 0  # detached


@pytest.mark.bpf
def test_a_count_table_fits_the_terminal_it_is_printed_on(pane, build_c):
    """Folded stacks make long keys: on an 80-column terminal the stack column gives way (a pipe gets
    whole lines: the other tests)."""
    binary = build_c("call_paths.c", "-O0", "-fno-omit-frame-pointer", "-fno-inline")
    p = pane("-F", "--by", "comm,ustack", "-c", f"sh -c 'echo g | {binary} 2'", f"usdt:{binary}:paths:leaf",
             width=80, height=30, command="count")
    assert p.exit_status() == "exit=0", "\n".join(p.screen())
    joined = p.tmux("capture-pane", "-p", "-J", "-t", "top").splitlines()  # wrapped lines joined back
    table = [line for line in joined if line.startswith(("probe", "paths:leaf"))]
    assert len(table) == 5 and all(len(line) <= 80 for line in table), joined
    assert [line.split()[-1] for line in table[1:]] == ["8", "6", "4", "2"], table


@pytest.mark.bpf
def test_without_a_terminal_the_table_is_printed_and_a_command_can_declare_its_probes():
    """A -c command whose probes come from usdtkit.provider at run time: printed mode (a pipe), the last
    table has every order the program fired."""
    orders = ROOT / "demo_apps" / "orders.py"
    result = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "top", "-c", f"{sys.executable} {orders} 30",
                             "usdt::demo_orders:order"], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    assert "Waiting for the command to declare usdt::demo_orders:order." in result.stderr
    tables = [block for block in result.stdout.split("\n\n") if block.strip()]
    last = tables[-1].splitlines()
    assert last[1].split() == ["PROBE", "COMM", "PID", "HITS/S", "TOTAL"]
    (row,) = [line.split() for line in last[2:]]
    assert row[0] == "demo_orders:order" and row[-1] == "30", last


@pytest.mark.bpf
def test_a_start_done_latency_goes_on_the_start_probe_row(processes):
    """hello_usdt fires greet then tick on one thread: -l greet -l tick times them; the latency ends at
    tick but is shown on greet's row, as the help says."""
    target = processes([str(HELLO), "1000000", "top"], stdout=subprocess.DEVNULL)
    result = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "top", "--json", "-d", "1.5", "-p",
                             str(target.pid), "-l", "usdt::hello:greet", "-l", "usdt::hello:tick"],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    rows = {row["probe"]: row for row in json.loads(result.stdout.splitlines()[0])["rows"]}
    assert rows["hello:greet"]["p50_ns"] is not None and rows["hello:greet"]["p50_ns"] < 20_000_000, rows
    assert rows["hello:greet"]["total"] >= 30
