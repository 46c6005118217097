"""Shared fixtures: compiling the C test programs, starting and reaping target processes."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

import pytest

from usdtkit.elf import read_usdt_probes

PROGRAMS = Path(__file__).parent / "integration" / "programs"


@pytest.fixture(scope="module")
def targets():
    """The processes that README and --help examples trace (``-p PID``), started as they are needed."""
    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    import cli_examples

    found = cli_examples.Targets()
    cli_examples.build_hello()
    yield found
    found.close()


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def private_hello(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A copy of the demo app of its own: no other process fires the probes of this file."""
    out = tmp_path_factory.mktemp("hello") / "hello_usdt"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(ROOT / "demo_apps" / "hello_usdt.c")], check=True)
    return str(out)


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess]:
    """``cli(*args)``: run the usdtkit command of this checkout, as a user would, and capture its output."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", *args], capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))

    return run


@pytest.fixture(scope="session")
def build_c(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """Compile ``tests/integration/programs/NAME`` with extra flags; returns the binary's path.

    Builds are cached per session by source and flags, so many tests can share one binary.
    """
    out_dir = tmp_path_factory.mktemp("programs")
    cache = {}

    def build(name: str, *flags: str, output: str = "") -> str:
        if shutil.which("gcc") is None:
            pytest.skip("gcc is not installed")
        source = PROGRAMS / name
        key = hashlib.sha256(source.read_bytes() + "\0".join(flags).encode()).hexdigest()[:12]
        if key not in cache:
            target = out_dir / (output or f"{source.stem}-{key}")
            cmd = ["gcc", "-g", *flags, "-o", str(target), str(source)]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            cache[key] = str(target)
        return cache[key]

    return build


@pytest.fixture
def cgroup():
    """A cgroup v2 directory of its own; processes moved into it are killed and it is removed after."""
    from usdtkit.plan.cgroups import cgroup2_mounts

    mounts = cgroup2_mounts()
    if not mounts:
        pytest.skip("cgroup v2 is not mounted")
    path = os.path.join(mounts[0], f"usdtkit-test-{os.getpid()}")
    os.mkdir(path)
    try:
        yield path
    finally:
        with open(os.path.join(path, "cgroup.procs")) as handle:
            for pid in handle.read().split():
                subprocess.run(["kill", "-9", pid])
        for _ in range(100):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.05)


@pytest.fixture
def processes() -> Callable[..., subprocess.Popen]:
    """Start target processes that are killed and reaped after the test, whatever happens."""
    started: List[subprocess.Popen] = []

    def start(argv: List[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.PIPE)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(argv, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream:
                stream.close()


def semaphore_value(pid: int, binary: str, probe_name: str) -> int:
    """Read a probe's 16-bit semaphore in a live process through /proc/PID/mem."""
    probe = next(p for p in read_usdt_probes(binary) if p.name == probe_name)
    offset = probe.semaphore_offset
    real = os.path.realpath(binary)
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or os.path.realpath(fields[5]) != real:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            file_off = int(fields[2], 16)
            if file_off <= offset < file_off + (end - start):
                with open(f"/proc/{pid}/mem", "rb") as mem:
                    mem.seek(start + offset - file_off)
                    return int.from_bytes(mem.read(2), "little")
    raise AssertionError("semaphore not mapped")



@pytest.fixture(scope="session")
def read_semaphore() -> Callable[[int, str, str], int]:
    """``read_semaphore(pid, binary, probe_name)``: a probe's semaphore, read live from the process."""
    return semaphore_value
