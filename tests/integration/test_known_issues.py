"""Probes known to misfire, on the real binary: Debian's CPython 3.11 and its python:function__entry.

The table entry in :mod:`usdtkit.elf.known_issues` makes two claims, both checked here by tracing
``/usr/bin/python3.11`` running 1,000 calls of a Python function: function__entry misses them while
function__return sees them all (and ``usdtkit count`` says so), and with python:line traced as well
function__entry fires for every call.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = "/usr/bin/python3.11"
CALLS = 1000
# The called function returns on line 2: function__return's third argument is that line number.
SCRIPT = f"def target():\n    return 1\n\n\nfor _ in range({CALLS}):\n    target()\n"

pytestmark = [
    pytest.mark.bpf,
    pytest.mark.skipif(not os.path.exists(PYTHON), reason=f"{PYTHON} is not installed"),
]


def count(tmp_path, *probes: str):
    """``usdtkit count --json -b arg2`` of python3.11 running SCRIPT: (hits per (probe, line), stderr)."""
    script = tmp_path / "calls.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, "-m", "usdtkit.cli.main", "count", "--json", "-b", "arg2", "-c", f"{PYTHON} {script}",
         *(f"usdt:{PYTHON}:python:{p}" for p in probes)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout.splitlines()[-1])["counts"]["counts"]
    return Counter({tuple(row["key"]): row["count"] for row in rows}), result.stderr


def total(hits: Counter, probe: str) -> int:
    return sum(n for (name, _line), n in hits.items() if name == f"python:{probe}")


def test_count_warns_about_function_entry_and_the_warning_is_true(tmp_path):
    hits, stderr = count(tmp_path, "function__entry", "function__return")
    assert hits[("python:function__return", 2)] == CALLS
    assert total(hits, "function__entry") < CALLS / 20  # a handful, from frames entered from C
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, stderr
    assert f"{PYTHON}: python:function__entry in CPython 3.11." in warnings[0]
    # The alternatives it names: function__return (above), and tracing python:line as well.
    assert "python:function__return" in warnings[0] and "python:line" in warnings[0]
    hits, _stderr = count(tmp_path, "function__entry", "function__return", "line")
    assert hits[("python:function__return", 2)] == CALLS
    assert total(hits, "function__entry") == total(hits, "function__return")
