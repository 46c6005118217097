"""A binary's path replaced between reading its notes and attaching: the uprobes still go to the file
that was read.  The attack: a user points a path root will trace at their own ELF (probes at offsets of
their choosing), root reads the notes, the user renames a link over the path to a root-owned binary,
root attaches "by path" and patches breakpoints (and semaphores) into the other binary."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from usdtkit.tracing.api import trace

ROOT = Path(__file__).resolve().parents[2]
VICTIM = ROOT / "demo_apps" / "build" / "hello_usdt"


def _swap(link: Path, new_target: Path) -> None:
    """Atomically point ``link`` at ``new_target``, as an attacker's rename would."""
    temporary = link.with_name(link.name + ".new")
    temporary.symlink_to(new_target)
    os.replace(temporary, link)


@pytest.mark.bpf
def test_system_wide_attach_goes_to_the_file_that_was_read(build_c, tmp_path):
    evil = build_c("swap_target.c")
    victim = tmp_path / "victim"
    shutil.copy(VICTIM, victim)
    link = tmp_path / "app"
    link.symlink_to(evil)
    session = trace(f"usdt:{link}:evil1:tick", count_by=(), events=False)  # notes read here
    _swap(link, victim)
    with session:
        subprocess.run([evil, "40"], check=True, timeout=20)
        victim_run = subprocess.run([str(victim), "2"], capture_output=True, timeout=20)
        session.run(duration=0.1)
    assert victim_run.returncode == 0
    assert session.counts() == {("evil1:tick",): 40}


@pytest.mark.bpf
def test_a_process_target_is_attached_in_the_file_it_maps(build_c, tmp_path):
    evil = Path(build_c("swap_target.c"))
    path = tmp_path / "app"
    shutil.copy(evil, path)
    process = subprocess.Popen([str(path), "wait", "25"], stdin=subprocess.PIPE)
    try:
        # the file the process runs is replaced on disk (a new inode at the same path)
        replacement = tmp_path / "app.new"
        shutil.copy(VICTIM, replacement)
        os.replace(replacement, path)
        with trace("usdt::evil1:tick", pid=process.pid, count_by=(), events=False) as session:
            process.stdin.write(b"x")
            process.stdin.close()
            session.run(duration=10)
        assert process.wait(timeout=10) == 0
        assert session.counts() == {("evil1:tick",): 25}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
