"""Hits kept from one cgroup v2 directory only (a container, a service), with a cgroup the test makes."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from usdtkit.errors import TargetError
from usdtkit.plan.cgroups import cgroup_id
from usdtkit.tracing.api import trace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELLO = os.path.join(ROOT, "demo_apps", "build", "hello_usdt")


@pytest.mark.bpf
def test_only_hits_from_the_cgroup_are_kept(cgroup):
    inside = subprocess.Popen([HELLO, "3000"], stdout=subprocess.DEVNULL)
    outside = subprocess.Popen([HELLO, "3000"], stdout=subprocess.DEVNULL)
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as handle:
            handle.write(str(inside.pid))
        with trace(f"usdt:{HELLO}:hello:tick", cgroup=cgroup, events=False, count_by=["pid"]) as only, \
                trace(f"usdt:{HELLO}:hello:tick", events=False, count_by=["pid"]) as every:
            time.sleep(0.5)
        assert {key[1] for key in only.counts()} == {inside.pid}
        assert {inside.pid, outside.pid} <= {key[1] for key in every.counts()}
    finally:
        for process in (inside, outside):
            process.kill()
            process.wait()


@pytest.mark.bpf
def test_the_cli_takes_a_cgroup_and_counts_by_it(cgroup):
    inside = subprocess.Popen([HELLO, "3000"], stdout=subprocess.DEVNULL)
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as handle:
            handle.write(str(inside.pid))
        result = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "count", "--cgroup", cgroup, "--by",
                                 "cgroup", "-d", "0.5", f"usdt:{HELLO}:hello:tick"], capture_output=True, text=True,
                                timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
        assert result.returncode == 0, result.stderr
        rows = [line.split() for line in result.stdout.splitlines()[1:]]
        assert [row[:2] for row in rows] == [["hello:tick", str(cgroup_id(cgroup))]] and int(rows[0][2]) > 0
    finally:
        inside.kill()
        inside.wait()


def test_a_path_that_is_not_a_cgroup_is_one_clear_error(tmp_path):
    with pytest.raises(TargetError, match="not in a cgroup v2 hierarchy"):
        cgroup_id(str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "count", "--cgroup", str(tmp_path),
                             f"usdt:{HELLO}:hello:tick"], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
