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
                 "uprobe_multi", "tracefs", "follow (-F)", "native library", "self-test"):
        assert name in names
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in doc["checks"])


def run_as_nobody(tmp_path, args):
    """``usdtkit ARGS`` as uid/gid 65534 without capabilities, with its own home for caches."""
    os.chmod(tmp_path, 0o777)
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
           sys.executable, "-m", "usdtkit.cli.main", *args]
    env = dict(os.environ, PYTHONPATH=ROOT, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=str(tmp_path))


needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                   reason="needs root and setpriv to drop it")


@needs_setpriv
def test_doctor_fails_clearly_without_privileges(tmp_path):
    result = run_as_nobody(tmp_path, ["doctor"])
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


def _tracefs_mount_points():
    with open("/proc/self/mountinfo") as handle:
        return [line.split()[4] for line in handle if " - tracefs " in line]


@needs_setpriv
def test_doctor_tells_an_unreadable_tracefs_from_a_missing_one(tmp_path):
    closed = [m for m in _tracefs_mount_points() if not os.stat(m).st_mode & 0o005]
    if not closed:
        pytest.skip("no tracefs mount closed to other users here")
    result = run_as_nobody(tmp_path, ["doctor"])
    line = next(x for x in result.stdout.splitlines() if x.split()[1:2] == ["tracefs"])
    assert "not mounted" not in line
    assert f"mounted at {closed[0]} but not readable by uid 65534" in line


@needs_setpriv
def test_tracing_without_privileges_fails_in_one_clear_line(tmp_path):
    result = run_as_nobody(tmp_path, ["count", "-d", "1", "uprobe:libc:getpid"])
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("usdtkit: error: not allowed to load BPF programs: ")
    # libbcc's own sentence, whole: not cut at "error:" as if it were a compiler location
    assert "could not open bpf map: " in lines[0] and "Operation not permitted" in lines[0]
    assert "(at " not in lines[0]


@pytest.mark.bpf
def test_compiler_errors_name_their_location():
    from usdtkit.bpf.bcc_backend import Program
    from usdtkit.errors import AttachError

    with pytest.raises(AttachError) as caught:
        Program("int f(void *ctx) { return undeclared_name; }")
    message = str(caught.value)
    assert "use of undeclared identifier 'undeclared_name' (at /virtual/main.c:1:" in message
    assert "\n" not in message
