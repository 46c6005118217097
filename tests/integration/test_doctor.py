"""`usdtkit doctor` on this machine: exit 0 as root, a clear FAIL line as an unprivileged user or
without bcc."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

USDTKIT = [sys.executable, "-m", "usdtkit.cli.main"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.update(kwargs.pop("env", {}))
    return subprocess.run(USDTKIT + args, capture_output=True, text=True, env=env, timeout=120, **kwargs)


@pytest.mark.bpf
def test_doctor_passes_as_root():
    result = run(["doctor"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert "OK    self-test" in result.stdout
    assert result.stdout.strip().endswith("tracing works")


@pytest.mark.bpf
def test_doctor_json():
    result = run(["doctor", "--json"])
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and result.returncode == 0
    names = [c["name"] for c in doc["checks"]]
    for name in ("kernel config", "privileges", "bcc", "kernel headers", "uprobe PMU", "semaphore refcount",
                 "uprobe_multi", "tracefs", "native library", "self-test"):
        assert name in names
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in doc["checks"])


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to drop it")
def test_doctor_fails_clearly_without_privileges(tmp_path):
    os.chmod(tmp_path, 0o777)
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
           sys.executable, "-m", "usdtkit.cli.main", "doctor"]
    env = dict(os.environ, PYTHONPATH=ROOT, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  privileges" in result.stdout
    assert "fix: run as root" in result.stdout
    assert "Traceback" not in result.stderr


def test_doctor_fails_clearly_without_bcc(tmp_path):
    # bcc cannot be uninstalled for one test: a module shadowing it that fails to import is the
    # closest real thing (what a Python without python3-bpfcc sees).
    shadow = tmp_path / "bcc"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('No module named bcc')\n")
    result = run(["doctor"], env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert result.returncode == 1
    assert "FAIL  bcc" in result.stdout and "python3-bpfcc" in result.stdout
    assert "Traceback" not in result.stderr
