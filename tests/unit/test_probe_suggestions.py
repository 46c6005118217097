"""A probe or function spelled wrong gets "did you mean ...?" with the names that exist, on real binaries
(the demo's hello_usdt, this machine's libc) through the real command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hello(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("hello") / "hello_usdt"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(ROOT / "demo_apps" / "hello_usdt.c")], check=True)
    return str(out)


def error_line(*args: str) -> str:
    """The one stderr line of a failing ``usdtkit trace`` (resolution fails before anything is attached)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "trace", *args], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("usdtkit: error: "), out.stderr
    return lines[0]


def test_usdt_typo(hello):
    for spec, suggestion in [
        ("hello:gret", " (did you mean hello:greet?)"),     # typo in the name
        ("gret", " (did you mean hello:greet?)"),           # no provider given
        ("helo:tick", " (did you mean hello:tick?)"),       # typo in the provider
        ("python:greet", " (did you mean hello:greet?)"),   # right name, wrong provider
        ("zzz:qqq", ""),                                    # nothing near: no guess
    ]:
        assert error_line(f"usdt:{hello}:{spec}").endswith(f"no USDT probe {spec}{suggestion}")


def test_usdt_typo_in_a_process(hello, processes):
    proc = processes([hello, "1000"])
    proc.stdout.readline()  # started and mapped
    line = error_line("-p", str(proc.pid), "usdt::hello:tik")
    assert line.endswith(f"pid {proc.pid}: no USDT probe hello:tik (did you mean hello:tick?)")


@pytest.mark.parametrize("spec, suggestion", [
    ("uprobe:libc:strlne", "no function named strlne (did you mean strlen, "),
    ("uretprobe:libc:mallok", "no function named mallok (did you mean malloc, "),
    ("uprobe:libc:strlen@GLIBC_9.9", "no function named strlen@GLIBC_9.9 (did you mean strlen@GLIBC_2.2.5?)"),
])
def test_function_typo_in_libc(spec, suggestion):
    assert suggestion in error_line(spec)


def test_function_typo_in_hello(hello):
    assert error_line(f"uprobe:{hello}:mian").endswith("no function named mian (did you mean main?)")
