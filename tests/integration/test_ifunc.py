"""Probing an indirect function (glibc's strlen) on the real libc: the probe lands on the resolver, so
usdtkit warns, names the implementations, and names the one the process calls; tracing that one sees
every call."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CALLS = 1000

pytestmark = pytest.mark.bpf


def usdtkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))


def hits(result: subprocess.CompletedProcess) -> int:
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    return sum(int(row[-1]) for row in rows)


def ifunc_warning(stderr: str) -> str:
    (line,) = [x for x in stderr.splitlines() if x.startswith("warning: ") and "(IFUNC)" in x]
    return line


def test_uretprobe_on_strlen_warns_and_names_the_implementation_that_sees_the_calls(build_c):
    program = build_c("ifunc_calls.c", "-O2")
    on_resolver = usdtkit("count", "-c", f"{program} {CALLS}", "uretprobe:libc:strlen")
    assert hits(on_resolver) < 10  # the resolver, run while relocating: not the calls
    warning = ifunc_warning(on_resolver.stderr)
    assert "strlen is an indirect function (IFUNC)" in warning
    assert "__strlen_sse2" in warning and "__strlen_avx2" in warning
    used = re.search(r"usdtkit's own process calls (__strlen_\w+) \(probe that instead\)", warning)
    assert used, warning
    on_implementation = usdtkit("count", "-c", f"{program} {CALLS}", f"uretprobe:libc:{used[1]}")
    assert hits(on_implementation) >= CALLS
    assert "(IFUNC)" not in on_implementation.stderr


def test_with_a_pid_the_warning_names_what_that_process_calls(build_c, processes):
    program = build_c("ifunc_calls.c", "-O2")
    proc = processes([program, "wait"])
    assert proc.stdout.readline() == b"ready\n"
    result = usdtkit("count", "-p", str(proc.pid), "-d", "1", "uprobe:libc:strlen")
    used = re.search(rf"pid {proc.pid} calls (__strlen_\w+) \(probe that instead\)", ifunc_warning(result.stderr))
    assert used, result.stderr
    assert hits(usdtkit("count", "-p", str(proc.pid), "-d", "1", f"uprobe:libc:{used[1]}")) >= 20


def test_a_wildcard_over_libc_says_each_kind_of_warning_once():
    """`str*` matches some 20 IFUNCs and some 30 functions starting %rip-relative: two lines, not fifty."""
    result = usdtkit("count", "-d", "0.2", "uprobe:libc:str*")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    (resolvers,) = [line for line in warnings if "indirect function" in line]
    assert re.search(r"warning: \d+ functions are indirect functions \(IFUNC\).*strcmp", resolvers)
    assert len(warnings) <= 3, warnings
