"""Patterns in probe specs, on real processes: every USDT probe an app fires counted under its own name,
libc functions by glob, C++ functions by demangled name, the probe limit, shared programs (one BPF
program for many probes, each hit still counted for its probe) and the same counts bpftrace sees."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from usdtkit.bpf import capabilities
from usdtkit.tracing.api import build_plan, trace

CPP_FLAGS = ("-O2", "-fno-exceptions", "-fno-rtti")


def bpf_programs() -> int:
    """BPF programs this process holds, as the kernel lists its fds (``prog_type`` in fdinfo)."""
    count = 0
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as info:
                count += "prog_type:" in info.read()
        except OSError:
            pass  # closed while listed
    return count


def hits(session) -> dict:
    return {label: s.hits for label, s in session.stats().items()}


@pytest.mark.bpf
def test_a_usdt_pattern_traces_every_probe_the_app_fires(private_hello):
    with trace(f"usdt:{private_hello}:hello:*", command=[private_hello, "6", "wild"], strings=["arg1"],
               command_stdout=subprocess.DEVNULL) as session:
        session.run(duration=30)
        events = [(e.probe, e.args) for e in session.events]
    # each round fires greet (i, name), then tick (i, i*i): both probes, in order, under their own names
    assert events == [event for i in range(1, 7)
                      for event in (("hello:greet", (i, "wild")), ("hello:tick", (i, i * i)))]
    assert hits(session) == {"hello:greet": 6, "hello:tick": 6}


@pytest.mark.bpf
def test_list_and_trace_agree_on_what_a_pattern_matches(private_hello, build_c, cli):
    listed = json.loads(cli("list", "--json", "--usdt", private_hello, "hello:*").stdout)["probes"]
    counted = cli("count", "--json", "-c", f"{private_hello} 2", f"usdt:{private_hello}:hello:*")
    assert counted.returncode == 0, counted.stderr
    assert sorted(json.loads(counted.stdout)["stats"]) == sorted(f"{p['provider']}:{p['name']}" for p in listed)
    # functions: a pattern attaches once per address the listing shows (aliases share one)
    cpp = build_c("cpp_names.cpp", *CPP_FLAGS)
    for target, pattern, spec in (("libc", "mall*", "uprobe:libc:mall*"),
                                  (cpp, "shapes::*", f"uprobe:{cpp}:cpp:shapes::*")):
        demangle = ["-C"] if "cpp:" in spec else []
        functions = json.loads(cli("list", "--json", "--functions", *demangle, target, pattern).stdout)["functions"]
        plan = build_plan([spec], events=False)
        try:
            traced = [site.pc for probe in plan.probes for site in probe.sites]
            names = {probe.label for probe in plan.probes}
        finally:
            plan.close()
        assert sorted(traced) == sorted({f["address"] for f in functions})
        assert names <= {f["demangled"] or f["name"] for f in functions}


@pytest.mark.bpf
def test_a_function_pattern_counts_and_times_each_function_once(build_c, cli):
    binary = build_c("alloc_calls.c", "-O2")
    counted = cli("count", "--json", "-c", f"{binary} 7 3", "uprobe:libc:mall*")
    assert counted.returncode == 0, counted.stderr
    doc = json.loads(counted.stdout)
    assert {tuple(row["key"]): row["count"] for row in doc["counts"]["counts"]} == {
        ("malloc",): 7, ("malloc_usable_size",): 3}
    # malloc is also __libc_malloc, __malloc...: one uprobe, under the name people use
    assert "malloc" in doc["stats"] and not any("libc_malloc" in label for label in doc["stats"])
    timed = cli("latency", "--json", "-c", f"{binary} 7 3", "uprobe:libc:mall*")
    assert timed.returncode == 0, timed.stderr
    totals = {h["probe"]: sum(b["count"] for b in h["buckets"]) for h in json.loads(timed.stdout)["histograms"]}
    assert totals == {"malloc": 7, "malloc_usable_size": 3}


@pytest.mark.bpf
def test_cpp_functions_are_traced_by_their_demangled_names(build_c, cli):
    binary = build_c("cpp_names.cpp", *CPP_FLAGS)
    with trace(f"uprobe:{binary}:cpp:shapes::*", command=[binary, "4"], events=False,
               command_stdout=subprocess.DEVNULL) as session:
        session.run(duration=30)
    assert hits(session) == {"shapes::Circle::Circle(long)": 4, "shapes::Circle::area() const": 4,
                             "shapes::scale(long)": 8, "shapes::scale(long, long)": 12}
    overloads = cli("count", "--json", "-c", f"{binary} 3", f"uprobe:{binary}:shapes::scale",
                        f'uretprobe:{binary}:cpp:"shapes::scale(long, long)"')
    assert overloads.returncode == 0, overloads.stderr
    assert {label: s["hits"] for label, s in json.loads(overloads.stdout)["stats"].items()} == {
        "shapes::scale(long)": 6, "shapes::scale(long, long)": 9, "shapes::scale(long, long):return": 9}


@pytest.mark.bpf
def test_a_large_match_is_refused_unless_the_limit_is_raised(build_c, cli):
    binary = build_c("alloc_calls.c", "-O2")
    refused = cli("count", "--max-probes", "5", "-c", f"{binary} 1", "uprobe:libc:str*")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    count = int(re.search(r"match (\d+) probes, more than the limit of 5: to attach them all, pass "
                          r"--max-probes (\d+) ", refused.stderr).group(1))
    assert count > 5 and f"--max-probes {count} " in refused.stderr
    raised = cli("count", "--max-probes", str(count), "-c", f"{binary} 1", "uprobe:libc:str*")
    assert raised.returncode == 0, raised.stderr
    assert f"of {count} probe(s)" in raised.stderr
    default = cli("count", "-c", f"{binary} 1", "uprobe:libc:*")
    assert default.returncode == 2 and "more than the limit of 512: " in default.stderr, default.stderr


@pytest.mark.bpf
def test_a_match_the_kernel_will_not_probe_is_one_clear_error(build_c, processes, cli):
    binary = build_c("unprobeable.c", "-O2")
    target = processes([binary])
    while os.path.realpath(f"/proc/{target.pid}/exe") != os.path.realpath(binary):
        time.sleep(0.01)  # the kernel checks instructions where the file is mapped: wait for the exec
    refused = cli("count", "-p", str(target.pid), "-d", "0.1", f"uprobe:{binary}:vex_*")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.splitlines() == [
        f"usdtkit: error: cannot attach uprobes at {binary} (2 sites) pid {target.pid}: the kernel refuses to probe "
        "the instruction there (ENOTSUPP; an AVX instruction, for one)"]


@pytest.fixture(params=["uprobe_multi", "perf links", "no cookies"])
def attach_path(request, monkeypatch):
    """The three ways probes are attached: uprobe_multi links with cookies (6.6+), perf events linked
    with cookies (5.15+), and one function per probe where the kernel has no cookies."""
    if request.param == "perf links":
        monkeypatch.setenv("USDTKIT_NO_UPROBE_MULTI", "1")
    if request.param == "no cookies":
        monkeypatch.setenv("USDTKIT_NO_BPF_COOKIE", "1")
    capabilities.detect.cache_clear()
    yield request.param
    capabilities.detect.cache_clear()


@pytest.mark.bpf
def test_probes_of_one_shape_share_one_program_and_keep_their_own_counts(build_c, attach_path):
    binary = build_c("alloc_calls.c", "-O2")
    with trace("uprobe:libc:mall*", command=[binary, "7", "3"], events=False, count_by=["pid"]) as session:
        programs = bpf_programs()
        probes = len(session.plan.probes)
        session.run(duration=30)
        links = session._program.links  # noqa: SLF001 (which attach path ran)
    assert probes >= 5
    assert programs == (probes if attach_path == "no cookies" else 1)
    assert (links > 0) == (attach_path != "perf links")
    assert {label: n for label, n in hits(session).items() if n} == {"malloc": 7, "malloc_usable_size": 3}
    assert bpf_programs() == 0  # everything detached and unloaded


@pytest.mark.bpf
def test_a_wildcard_counts_what_bpftrace_counts_on_the_same_process(build_c, processes):
    binary = build_c("latency.c", "-O2", "-pthread")
    target = processes([binary, "pairs", "2", "10"])
    script = f'usdt:{binary}:app:* {{ @[probe] = count(); }} BEGIN {{ printf("ready\\n"); }}'
    bpftrace = processes(["bpftrace", "-p", str(target.pid), "-e", script], stdin=subprocess.DEVNULL,
                         text=True)
    with trace(f"usdt:{binary}:app:*", pid=target.pid, events=False) as session:
        for line in bpftrace.stdout:
            if line.strip() == "ready":
                break
        target.stdin.write(b"g")
        target.stdin.flush()
        session.run(duration=30)
    output, _ = bpftrace.communicate(timeout=60)  # bpftrace -p ends with its process
    theirs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^@\[usdt:\S+:(app:\w+)\]: (\d+)$", output, re.M)}
    ours = {label: n for label, n in hits(session).items() if n}
    assert ours == theirs == {"app:request__start": 20, "app:request__done": 20}
