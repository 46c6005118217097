"""`usdtkit demo` end to end: it traces both demo services and its counts match the load it drove."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def demo(*args):
    return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "demo", *args], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.bpf
def test_demo_json_counts_match_the_load():
    result = demo("--json", "--requests", "6")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["requests_traced"] == 6 * 4 * 2
    for name in ("demo_httpd", "demo_pyservice"):
        service = doc["services"][name]
        for route in ("/", "/items", "/slow", "other"):
            buckets = service["latency_by_route"][route]["buckets"]
            assert sum(b["count"] for b in buckets) == 6, (name, route)
        slow = service["latency_by_route"]["/slow"]["buckets"]
        assert all(b["low"] >= 2**24 for b in slow)  # 20 ms sleeps: at least 16.7 ms
        statuses = {tuple(row["key"][1:]): row["count"] for row in service["status_counts"]["counts"]}
        assert statuses == {("/", 200): 6, ("/items", 200): 6, ("/slow", 200): 6, ("other", 404): 6}
        assert service["probes"]
    render = doc["services"]["demo_httpd"]["render_items_latency"]
    assert sum(b["count"] for h in render.values() for b in h["buckets"]) == 6
    # everything it started is gone
    # (only its own: other demos may run on the machine at the same time)
    for name in ("demo_httpd", "demo_pyservice"):
        assert not os.path.exists(f"/proc/{doc['services'][name]['pid']}"), name


@pytest.mark.bpf
def test_demo_text_shows_histograms():
    result = demo("--requests", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "route /slow: 3 requests" in out and "|@" in out
    assert "24 requests traced; matches the 24 requests sent; 0 records lost." in out


def test_demo_says_what_is_missing_without_privileges(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    os.chmod(tmp_path, 0o777)
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
           sys.executable, "-m", "usdtkit.cli.main", "demo"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                            env=dict(os.environ, PYTHONPATH=ROOT, HOME=str(tmp_path)))
    assert result.returncode == 1
    assert "the demo cannot trace here: privileges" in result.stderr
    assert "usdtkit doctor" in result.stderr
    assert "Traceback" not in result.stderr
