"""Flame graphs, folded stacks and speedscope profiles of real stacks, checked against known call paths.

``call_paths`` calls leaf() along four paths a known number of times per round (see its source); the
files written by ``usdtkit count --by ustack`` must show each path, and every frame on the way, with
exactly those counts.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest

from usdtkit.elf import read_functions
from usdtkit.plan import site_cost
from usdtkit.views.flamegraph import frames_of
from usdtkit.views.stacks import parse_folded

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 5
# leaf() hits per path (root part above main left out), for ROUNDS rounds
PATHS = {("main", "alpha", "leaf"): 1 * ROUNDS, ("main", "alpha", "hop", "leaf"): 2 * ROUNDS,
         ("main", "beta", "hop", "leaf"): 3 * ROUNDS, ("main", "beta", "delta", "hop", "leaf"): 4 * ROUNDS}
HOP_PATHS = {("main", "alpha", "hop"): 2 * ROUNDS, ("main", "beta", "hop"): 3 * ROUNDS,
             ("main", "beta", "delta", "hop"): 4 * ROUNDS}


def usdtkit(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """The usdtkit command of this checkout."""
    return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", *args], input=stdin, capture_output=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def traced(processes, binary: str, rounds: int, *args: str) -> subprocess.CompletedProcess:
    """``usdtkit ARGS -p PID`` on ``binary ROUNDS``, run while the tracer is attached; the target stays
    alive until the tracer has its counts, so its frames can be named."""
    target = processes([binary, str(rounds)])
    tracer = subprocess.Popen([sys.executable, "-m", "usdtkit.cli.main", *args, "-p", str(target.pid)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        for line in tracer.stderr:
            if line.startswith(b"Attached "):
                break
        else:
            raise AssertionError(f"not attached (exit {tracer.wait()})")
        target.stdin.write(b"g")
        target.stdin.flush()
        assert target.stdout.readline() == b"done\n"
        tracer.send_signal(signal.SIGINT)
        out, err = tracer.communicate(timeout=60)
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
    return subprocess.CompletedProcess(tracer.args, tracer.returncode, out, err)


def function_offsets(binary: str) -> Dict[str, int]:
    """File offsets of the program's functions."""
    return {fn.name: fn.file_offset for fn in read_functions(binary)}


def assert_paths(stacks: Dict[Tuple[str, ...], int], expected: Dict[Tuple[str, ...], int]) -> None:
    """``stacks`` from main up are ``expected``, each path with its count.  The kernel may fail to take a
    stack (``[no stack]``, a counted read error): a hit whose stack collides in the kernel's stack-map hash
    with another stack gets no stack id, every time for that stack.  So one path may come short, by exactly
    the hits without a stack; no path may be wrong or counted more than it ran."""
    missing = sum(n for stack, n in stacks.items() if "main" not in stack)
    assert all(stack == ("[no stack]",) for stack in stacks if "main" not in stack), stacks
    paths = from_main({stack: n for stack, n in stacks.items() if "main" in stack})
    assert set(paths) <= set(expected), paths
    short = {p: n - paths.get(p, 0) for p, n in expected.items() if paths.get(p, 0) != n}
    assert len(short) <= 1 and all(n > 0 for n in short.values()) and sum(short.values()) == missing, (paths, stacks)


def from_main(stacks: Dict[Tuple[str, ...], int]) -> Dict[Tuple[str, ...], int]:
    """Each stack from ``main`` up (what lies below main depends on libc's unwind info)."""
    out: Dict[Tuple[str, ...], int] = {}
    for stack, count in stacks.items():
        assert "main" in stack, stack
        tail = stack[stack.index("main"):]
        out[tail] = out.get(tail, 0) + count
    return out


def svg_paths(svg: str) -> Dict[Tuple[str, ...], int]:
    """Every drawn frame's path from the root (its ancestors by depth and span) with its count."""
    frames = frames_of(svg)
    by_depth: Dict[int, list] = {}
    for name, count, depth, x in frames:
        by_depth.setdefault(depth, []).append((x, count, name))
    paths: Dict[Tuple[str, ...], int] = {}

    def walk(depth: int, lo: int, hi: int, path: Tuple[str, ...]) -> None:
        for x, count, name in by_depth.get(depth, []):
            if lo <= x and x + count <= hi:
                here = path + (name,)
                assert here not in paths, f"frame {here} drawn twice"
                paths[here] = count
                walk(depth + 1, x, x + count, here)

    walk(0, 0, max(c for _, c, d, _ in frames if d == 0), ())
    return paths


@pytest.mark.bpf
def test_a_flame_graph_shows_every_frame_of_known_call_paths_with_its_count(build_c, processes, tmp_path):
    binary = build_c("call_paths.c", "-O0", "-fno-omit-frame-pointer", "-fno-inline")
    svg, folded, profile = tmp_path / "paths.svg", tmp_path / "paths.folded", tmp_path / "paths.json"
    result = traced(processes, binary, ROUNDS, "count", "--by", "ustack", "--flamegraph", str(svg),
                    "--folded", str(folded), "--speedscope", str(profile), f"usdt:{binary}:paths:leaf")
    assert result.returncode == 0, result.stderr

    stacks = parse_folded(folded.read_text().splitlines())
    assert_paths(stacks, PATHS)
    walked = from_main({stack: n for stack, n in stacks.items() if "main" in stack})

    drawn = svg_paths(svg.read_text())
    assert drawn[("all",)] == 10 * ROUNDS
    (below,) = {path[:path.index("main")] for path in drawn if "main" in path}  # one way down to main
    expected = {}
    for path, count in walked.items():  # every prefix of every path is a frame, with the sum under it
        for end in range(1, len(path) + 1):
            expected[path[:end]] = expected.get(path[:end], 0) + count
    assert {p[len(below):]: n for p, n in drawn.items() if p[:len(below)] == below and len(p) > len(below)} \
        == expected

    doc = json.loads(profile.read_text())
    names = [frame["name"] for frame in doc["shared"]["frames"]]
    (prof,) = doc["profiles"]
    sampled = {tuple(names[i] for i in sample): weight for sample, weight in zip(prof["samples"], prof["weights"])}
    assert sampled == stacks and prof["endValue"] == 10 * ROUNDS


@pytest.mark.bpf
def test_the_fields_before_the_stack_split_the_graph_at_its_root(build_c, processes, tmp_path):
    binary = build_c("call_paths.c", "-O0", "-fno-omit-frame-pointer", "-fno-inline")
    folded = tmp_path / "paths.folded"
    result = traced(processes, binary, ROUNDS, "count", "--by", "arg0,ustack", "--folded", str(folded),
                    f"usdt:{binary}:paths:leaf")
    assert result.returncode == 0, result.stderr
    stacks = parse_folded(folded.read_text().splitlines())
    by_id = {}
    for stack, count in stacks.items():
        by_id.setdefault(stack[0], {})[stack[stack.index("main"):]] = count
    assert by_id == {f"arg0={i}": {path: count} for i, (path, count) in enumerate(PATHS.items(), 1)}


def test_a_picture_without_stacks_is_refused_before_attaching(tmp_path):
    result = usdtkit("count", "--flamegraph", str(tmp_path / "x.svg"), "-c", "true", "usdt::paths:leaf")
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--flamegraph needs stacks: add ustack to --by" in lines[0], result.stderr
    assert not (tmp_path / "x.svg").exists()


@pytest.mark.bpf
def test_a_file_that_cannot_be_written_loses_no_counts(build_c, processes, tmp_path):
    binary = build_c("call_paths.c", "-O0", "-fno-omit-frame-pointer", "-fno-inline")
    target = tmp_path / "missing-dir" / "x.svg"
    result = traced(processes, binary, 1, "count", "--json", "--by", "ustack", "--flamegraph", str(target),
                    f"usdt:{binary}:paths:leaf")
    assert result.returncode == 1
    counts = json.loads(result.stdout.decode().splitlines()[-1])["counts"]["counts"]
    assert sum(row["count"] for row in counts) == 10
    assert result.stderr.decode().strip().splitlines()[-1].startswith(f"usdtkit: error: cannot write --flamegraph {target}: ")


@pytest.mark.bpf
@pytest.mark.parametrize("flags", [("-O0", "-fno-omit-frame-pointer", "-fno-inline"),
                                   ("-O2", "-fno-omit-frame-pointer", "-momit-leaf-frame-pointer", "-fno-inline",
                                    "-fno-optimize-sibling-calls")])
def test_a_stack_taken_at_a_function_entry_has_its_caller_once(build_c, processes, tmp_path, flags):
    """At a function's first instruction the frame pointer is still its caller's: the walk alone goes
    from the function to its caller's caller.  Kernels since 6.11 add the caller themselves when that
    instruction is ``push %rbp`` or ``endbr64`` (every function at -O0); at -O2 with
    -momit-leaf-frame-pointer, leaf() starts with another instruction and only usdtkit adds it."""
    binary = build_c("call_paths.c", *flags)
    first = {name: site_cost.read_site(binary, offset, 4) for name, offset in function_offsets(binary).items()}
    assert site_cost.kernel_adds_caller(first["hop"])
    if "-O2" in flags:
        assert not site_cost.kernel_adds_caller(first["leaf"]), first["leaf"].hex()
    folded = tmp_path / "entry.folded"
    result = traced(processes, binary, ROUNDS, "count", "--by", "ustack", "--folded", str(folded),
                    f"uprobe:{binary}:leaf", f"uprobe:{binary}:hop")
    assert result.returncode == 0, result.stderr
    stacks = parse_folded(folded.read_text().splitlines())
    assert_paths({s[1:]: n for s, n in stacks.items() if s[0] == "leaf"}, PATHS)
    assert_paths({s[1:]: n for s, n in stacks.items() if s[0] == "hop"}, HOP_PATHS)


@pytest.mark.bpf
@pytest.mark.parametrize("native", ["1", ""])
def test_event_stacks_at_a_function_entry_have_their_caller_once(build_c, processes, monkeypatch, native):
    """The same for the stacks of events, decoded in C and in Python."""
    from collections import Counter

    from usdtkit import trace

    monkeypatch.setenv("USDTKIT_NO_NATIVE_EVENTS", "" if native else "1")
    flags = ("-O2", "-fno-omit-frame-pointer", "-momit-leaf-frame-pointer", "-fno-inline", "-fno-optimize-sibling-calls")
    binary = build_c("call_paths.c", *flags)
    target = processes([binary, str(ROUNDS)])
    with trace(f"uprobe:{binary}:leaf", f"uprobe:{binary}:hop", pid=target.pid, stacks=True) as session:
        assert session.native == bool(native)
        target.stdin.write(b"g")
        target.stdin.flush()
        assert target.stdout.readline() == b"done\n"
        session.run(duration=0.5)
        events = list(session.events)
    # an event whose stack the kernel could not take has no frames: counted as [no stack], as in counts
    paths = Counter((e.probe, tuple(f.split("+")[0] for f in reversed(e.stack)) or ("[no stack]",)) for e in events)
    assert_paths({stack: n for (probe, stack), n in paths.items() if probe == "leaf"}, PATHS)
    assert_paths({stack: n for (probe, stack), n in paths.items() if probe == "hop"}, HOP_PATHS)


@pytest.mark.bpf
def test_pictures_are_never_written_through_a_symlink_or_into_another_users_file(build_c, processes, tmp_path):
    binary = build_c("call_paths.c", "-O0", "-fno-omit-frame-pointer", "-fno-inline")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "link.svg"
    link.symlink_to(victim)
    theirs = tmp_path / "theirs.folded"
    theirs.write_text("theirs")
    os.chown(theirs, 65534, 65534)
    result = traced(processes, binary, 1, "count", "--by", "ustack", "--flamegraph", str(link), "--folded",
                    str(theirs), f"usdt:{binary}:paths:leaf")
    assert result.returncode == 1
    error = result.stderr.decode().strip().splitlines()[-1]
    assert f"cannot write --flamegraph {link}" in error and f"cannot write --folded {theirs}" in error, error
    assert victim.read_text() == "precious" and theirs.read_text() == "theirs"
    assert result.stdout.decode().strip()  # the counts were printed all the same
