"""Every argument form read exactly from a real kernel trace: registers of each width with sign
extension, memory through a register, base+index*scale, rip-relative symbols, constants, strings;
in a PIE, a non-PIE executable and a shared library."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from usdtkit.tracing.api import trace

N = 40


def expected_forms(i: int, total_before: int):
    weight = -7 * i
    return (
        total_before + weight,  # global_total after the update: sym(%rip) or a register
        1000000000000 * i,  # int64 through (%rdi)
        weight,  # int32 at 8(%rdi)
        65535 - i,  # uint16 at 12(%rdi)
        i - 3,  # int8 at 14(%rdi), negative for i < 3
        [0, -10, 20, -30, 40, -50, 60, -70, 80, -90, 100, -110, 120, -130, 140, -150][i % 16],  # SIB
    )


def run_forms(binary, processes, probe_binary=None, env=None):
    target = processes([binary, str(N)], env=env)
    where = probe_binary or binary
    if probe_binary:  # the dynamic loader maps the library a moment after exec: wait for it
        name = os.path.basename(probe_binary).split(".")[0]
        deadline = time.time() + 10
        while name not in open(f"/proc/{target.pid}/maps").read() and time.time() < deadline:
            time.sleep(0.01)
    with trace(f"usdt:{where}:demo:mem", pid=target.pid) as session:
        target.stdin.write(b"g")
        target.stdin.flush()
        session.run(duration=20)
        events = list(session.events)
        stats = session.stats()["demo:mem"]
    assert target.wait(timeout=10) == 0
    assert stats.hits == N and stats.read_errors == 0 and stats.lost_events == 0
    total = -5
    for i, event in enumerate(events):
        want = expected_forms(i, total)
        total = want[0]
        assert event.args == want, f"event {i}"
    return events


@pytest.mark.bpf
@pytest.mark.parametrize("flags", [
    ("-O2", "-DSTAP_SDT_ARG_CONSTRAINT=m"),  # memory forms, PIE
    ("-O2", "-DSTAP_SDT_ARG_CONSTRAINT=m", "-no-pie"),
    ("-O2",),  # register forms
    ("-O0",),  # stack slots
], ids=["memory-pie", "memory-nopie", "registers", "O0"])
def test_forms_in_executables(build_c, processes, flags):
    binary = build_c("usdt_forms.c", *flags)
    assert len(run_forms(binary, processes)) == N


@pytest.mark.bpf
def test_forms_in_a_shared_library(build_c, processes, tmp_path):
    lib = tmp_path / "libforms.so"
    src = os.path.join(os.path.dirname(__file__), "programs")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-DSTAP_SDT_ARG_CONSTRAINT=m",
                    "-Dmain=__attribute__((visibility(\"default\")))forms_main", "-o", str(lib),
                    os.path.join(src, "usdt_forms.c")], check=True)
    exe = tmp_path / "driver"
    subprocess.run(["gcc", "-O2", "-o", str(exe), os.path.join(src, "forms_driver.c"), str(lib),
                    f"-Wl,-rpath,{tmp_path}"], check=True)
    out = subprocess.run(["readelf", "-n", str(lib)], capture_output=True, text=True).stdout
    assert "global_total(%rip)" in out  # the library really uses the rip-relative form
    # by library path, and by library name with -p
    assert len(run_forms(str(exe), processes, probe_binary=str(lib))) == N
    assert len(run_forms(str(exe), processes, probe_binary="libforms")) == N


@pytest.mark.bpf
def test_several_call_sites_and_constants(build_c, processes):
    binary = build_c("usdt_args.c", "-O2")
    target = processes([binary, "20"])
    with trace(f"usdt:{binary}:demo:tick", pid=target.pid, count_by=["arg0"]) as session:
        assert len({site.file_offset for site in session.plan.probes[0].sites}) == 2
        target.stdin.write(b"g")
        target.stdin.flush()
        session.run(duration=20)
        counts = session.counts()
    want = {("demo:tick", i if i % 2 else i * 1000): 1 for i in range(20)}
    assert dict(counts) == want
