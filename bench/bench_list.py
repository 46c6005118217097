#!/usr/bin/env python3
"""Benchmark: list every USDT probe and function symbol of the largest libjvm.so on this machine.

Runs, in one go and N times each (after one warm-up run), ``usdtkit list --json LIB`` as a process
with a warm function-table cache and with an empty one, the table listing, the in-process API
(``read_usdt_probes`` + ``read_functions``), ``bpftrace -l 'uprobe:LIB:*'``, ``bpftrace -l
'usdt:LIB:*'``, ``tplist-bpfcc -l LIB``, ``readelf -n`` and ``readelf -Ws``, and prints the median wall
time of each, its ratio to bpftrace's uprobe listing (the target: usdtkit's full JSON listing at most
0.5x with a warm cache) and how many items each printed.  The default libraries are the largest
libjvm.so under /usr/lib/jvm, libc and python3.11; the caches used live in temp folders removed after.

    .venv/bin/python bench/bench_list.py [--reps 11] [--lib PATH ...] [--usdtkit CMD] [--json]

``--usdtkit`` times another installed ``usdtkit`` command (a wheel in its own venv, say) instead of this
checkout's editable install, whose import hook costs every start some milliseconds.

Tools that are missing are reported as such.  bpftrace needs root.  Python children run with
bytecode caching allowed (as an installed package would), so the warm-up run compiles usdtkit once.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def largest_libjvm() -> Optional[str]:
    found = [p for p in glob.glob("/usr/lib/jvm/**/libjvm.so", recursive=True) if os.path.isfile(p)]
    unique = {os.path.realpath(p): p for p in found}
    return max(unique, key=os.path.getsize) if unique else None


def child_env(checkout: bool = True) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if checkout:
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def usdtkit_argv(command: Optional[str] = None) -> List[str]:
    if command:
        return [command]
    exe = os.path.join(ROOT, ".venv", "bin", "usdtkit")
    if os.access(exe, os.X_OK):
        return [exe]
    python = os.path.join(ROOT, ".venv", "bin", "python")
    return [python if os.access(python, os.X_OK) else sys.executable, "-m", "usdtkit.cli.main"]


class Case:
    """One thing to time: a command line or an in-process callable, and how to count its output."""

    def __init__(self, label: str, argv: Optional[List[str]] = None, func: Optional[Callable[[], int]] = None,
                 count: Optional[Callable[[bytes], int]] = None, needs: Optional[str] = None,
                 cold: bool = False) -> None:
        self.label, self.argv, self.func, self.count, self.needs = label, argv, func, count, needs
        self.cold = cold  # every run starts with an empty usdtkit cache
        self.times: List[float] = []
        self.items: Optional[int] = None
        self.skipped: Optional[str] = None

    def available(self) -> bool:
        if self.needs and shutil.which(self.needs) is None:
            self.skipped = f"{self.needs} not installed"
        elif self.needs == "bpftrace" and os.geteuid() != 0:
            self.skipped = "bpftrace -l needs root"
        return self.skipped is None

    def run_once(self, env: dict) -> None:
        start = time.perf_counter()
        if self.func is not None:
            self.items = self.func()
        else:
            with tempfile.TemporaryDirectory(prefix="bench-list-cold-") as cold:
                if self.cold:
                    env = dict(env, XDG_CACHE_HOME=cold)
                start = time.perf_counter()
                out = subprocess.run(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
                elapsed = time.perf_counter() - start
            if out.returncode != 0:
                self.skipped = f"exit status {out.returncode}"
                return
            self.times.append(elapsed)
            self.items = self.count(out.stdout) if self.count else None
            return
        self.times.append(time.perf_counter() - start)


def _lines(prefix: bytes = b"") -> Callable[[bytes], int]:
    return lambda out: sum(1 for line in out.splitlines() if line.startswith(prefix))


def _readelf_funcs(out: bytes) -> int:
    return sum(1 for line in out.splitlines()
               if (b" FUNC " in line or b" IFUNC " in line) and b" UND " not in line)


def _usdtkit_json(out: bytes) -> int:
    doc = json.loads(out)
    return len(doc.get("probes", [])) + len(doc.get("functions", []))


def _in_process(lib: str) -> Callable[[], int]:
    sys.path.insert(0, ROOT)
    from usdtkit.elf import read_functions, read_usdt_probes

    return lambda: len(read_usdt_probes(lib)) + len(read_functions(lib))


def resolved(lib: str) -> str:
    """``lib`` as a path: a library name (libc.so.6) resolved as ``usdtkit list`` resolves it, so every
    tool lists the same file."""
    sys.path.insert(0, ROOT)
    from usdtkit.elf.targets import resolve_target

    return resolve_target(lib)


def default_libs() -> List[str]:
    found = [largest_libjvm()]
    sys.path.insert(0, ROOT)
    from usdtkit.elf.targets import resolve_target

    for name in ("libc", "/usr/bin/python3.11"):
        try:
            found.append(resolve_target(name))
        except Exception:  # not installed here: benchmark the others
            pass
    return [lib for lib in found if lib]


def bench(lib: str, reps: int, env: dict, command: Optional[str] = None) -> List[dict]:
    """Time every case on ``lib``; one result row per case."""
    tplist = shutil.which("tplist-bpfcc") and "tplist-bpfcc" or "tplist"
    usdtkit = usdtkit_argv(command)
    cases = [
        Case("usdtkit list --json LIB (warm cache)", usdtkit + ["list", "--json", lib], count=_usdtkit_json),
        Case("usdtkit list --json LIB (cold cache)", usdtkit + ["list", "--json", lib], count=_usdtkit_json,
             cold=True),
        Case("usdtkit list LIB (table, warm cache)", usdtkit + ["list", lib], count=None),
        Case("usdtkit API in-process (probes+functions)", func=_in_process(lib)),
        Case("bpftrace -l 'uprobe:LIB:*'", ["bpftrace", "-l", f"uprobe:{lib}:*"], count=_lines(b"uprobe:"),
             needs="bpftrace"),
        Case("bpftrace -l 'usdt:LIB:*'", ["bpftrace", "-l", f"usdt:{lib}:*"], count=_lines(b"usdt:"),
             needs="bpftrace"),
        Case("tplist-bpfcc -l LIB", [tplist, "-l", lib], count=_lines(), needs=tplist),
        Case("readelf -n LIB", ["readelf", "-n", lib], count=lambda out: out.count(b"Provider:"), needs="readelf"),
        Case("readelf -Ws LIB", ["readelf", "-Ws", lib], count=_readelf_funcs, needs="readelf"),
    ]
    active = [c for c in cases if c.available()]
    for case in active:  # warm-up: page cache, .pyc files, the warm usdtkit cache
        case.run_once(env)
        case.times.clear()
    for _ in range(reps):  # interleaved, so a noisy moment hits every case alike
        for case in active:
            if case.skipped is None:
                case.run_once(env)

    reference = next((c for c in cases if c.label.startswith("bpftrace -l 'uprobe") and c.times), None)
    ref = statistics.median(reference.times) if reference else None
    rows = []
    for case in cases:
        med = statistics.median(case.times) if case.times else None
        rows.append({
            "case": case.label,
            "median_s": med,
            "ratio_vs_bpftrace_uprobe": (med / ref) if med is not None and ref else None,
            "items": case.items,
            "skipped": case.skipped,
        })
    return rows


def print_table(lib: str, reps: int, rows: List[dict]) -> None:
    print(f"{lib} ({os.path.getsize(lib) / 1e6:.1f} MB), median of {reps} runs")
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':<{width}}  {'median':>9}  {'vs bpftrace':>11}  {'items':>7}")
    for r in rows:
        if r["median_s"] is None:
            print(f"{r['case']:<{width}}  {'-':>9}  {'-':>11}  {'-':>7}  ({r['skipped']})")
            continue
        ratio = f"{r['ratio_vs_bpftrace_uprobe']:.2f}x" if r["ratio_vs_bpftrace_uprobe"] else "n/a"
        items = "" if r["items"] is None else str(r["items"])
        print(f"{r['case']:<{width}}  {r['median_s'] * 1e3:>7.1f}ms  {ratio:>11}  {items:>7}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=11, help="timed repetitions of each case (default 11)")
    parser.add_argument("--lib", action="append",
                        help="ELF file to list, repeatable (default: the largest libjvm.so, libc, python3.11)")
    parser.add_argument("--usdtkit", metavar="CMD", help="the usdtkit command to time (default: this checkout's)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    libs = [resolved(lib) for lib in args.lib] if args.lib else default_libs()
    if not libs:
        print("no libjvm.so, libc or python3.11 found; pass --lib", file=sys.stderr)
        return 1
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-list-warm-") as warm:
        env = dict(child_env(checkout=args.usdtkit is None), XDG_CACHE_HOME=warm)
        for n, lib in enumerate(libs):
            rows = bench(lib, args.reps, env, args.usdtkit)
            results.append({"lib": lib, "size": os.path.getsize(lib), "reps": args.reps, "results": rows})
            if not args.json:
                if n:
                    print()
                print_table(lib, args.reps, rows)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
