"""Cost of usdtkit.provider probes, untraced and traced by bpftrace, against plain Python and ctypes.

    sudo .venv/bin/python bench/bench_provider.py [--repeat 9] [--number 1000000] [--cpu 1]

Prints ns per call (median of --repeat runs of timeit, rows interleaved to share drift) for:
an empty Python function call; a disabled usdtkit probe with the recommended idiom
``if probe.enabled: probe(...)``, fired by plain call, and through ``stapsdt.Probe.fire``; a plain
ctypes call of the probe's native site; and, as root, the same probe enabled and traced by bpftrace
with an in-kernel count (``usdt:PATH:bench:hot { @c = count(); }``), next to the traced ctypes call
(whose difference to the untraced one is the kernel's per-hit cost).

Targets (issue 4): disabled usdtkit probe <= 1.5x the empty call; traced usdtkit probe <= ctypes
call + the kernel's per-hit cost.  Not a test: numbers depend on the machine and its noise.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import usdtkit  # noqa: E402,F401  (preloads libstapsdt.so for stapsdt)
import stapsdt  # noqa: E402
from usdtkit.provider import Provider  # noqa: E402


def empty() -> None:
    pass


def measure(rows: Dict[str, Tuple[str, dict]], number: int, repeat: int) -> Dict[str, float]:
    """Median ns per execution of each statement; rows interleaved inside every repeat."""
    timers = {name: timeit.Timer(stmt, globals=env) for name, (stmt, env) in rows.items()}
    loop = timeit.Timer("pass").timeit(number) / number  # timeit's own loop overhead
    samples: Dict[str, List[float]] = {name: [] for name in rows}
    for _ in range(repeat):
        for name, timer in timers.items():
            samples[name].append((timer.timeit(number) / number - loop) * 1e9)
    return {name: statistics.median(values) for name, values in samples.items()}


class Bpftrace:
    """bpftrace counting hits of the given USDT probes in kernel, until stopped."""

    def __init__(self, program: str) -> None:
        self.proc = subprocess.Popen(["bpftrace", "-e", program], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def stop(self) -> Dict[str, int]:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        return {m.group(1): int(m.group(2)) for m in re.finditer(r"@(\w+): (\d+)", out)}


def wait_enabled(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("bpftrace did not enable the probes")
        time.sleep(0.02)
    time.sleep(0.5)  # the semaphore rises just before the BPF program is attached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--number", type=int, default=1_000_000, help="calls per untraced sample")
    parser.add_argument("--traced-number", type=int, default=200_000, help="calls per traced sample")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    os.environ.setdefault("USDTKIT_RUNTIME_DIR", tempfile.mkdtemp(prefix="usdtkit-bench-"))
    app = Provider("bench")
    probe = app.probe("hot", int, str)
    app.load()
    sprovider = stapsdt.Provider("benchstapsdt")
    sprobe = sprovider.add_probe("hot", stapsdt.ArgTypes.int64, stapsdt.ArgTypes.uint64)
    sprovider.load()

    site = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_char_p)(probe._native.contents._fire)
    data = b"x"
    env = dict(empty=empty, probe=probe, sprobe=sprobe, site=site, data=data)
    rows = {
        "empty Python function call": ("empty()", env),
        "usdtkit disabled: if probe.enabled: probe(1, 'x')": ("if probe.enabled: probe(1, 'x')", env),
        "usdtkit disabled: probe(1, 'x')": ("probe(1, 'x')", env),
        "stapsdt disabled: Probe.fire(1, 'x')": ("sprobe.fire(1, 'x')", env),
        "ctypes call of the site (untraced)": ("site(1, data)", env),
    }
    results = measure(rows, args.number, args.repeat)

    traced: Dict[str, float] = {}
    hits: Dict[str, int] = {}
    if os.geteuid() == 0 and shutil.which("bpftrace"):
        sfile = ctypes.cast(sprovider._provider + 40, ctypes.POINTER(ctypes.c_char_p))[0].decode()
        tracer = Bpftrace(f"usdt:{app.path}:bench:hot {{ @usdtkit = count(); }} "
                          f"usdt:{sfile}:benchstapsdt:hot {{ @stapsdt = count(); }}")
        try:
            wait_enabled(lambda: bool(probe.enabled) and sprobe.is_enabled)
            traced_rows = {
                "usdtkit traced: if probe.enabled: probe(1, 'x')": ("if probe.enabled: probe(1, 'x')", env),
                "ctypes call of the site (traced)": ("site(1, data)", env),
                "stapsdt traced: Probe.fire(1, 'x')": ("sprobe.fire(1, 'x')", env),
            }
            traced = measure(traced_rows, args.traced_number, args.repeat)
        finally:
            hits = tracer.stop()
    results.update(traced)

    base = results["empty Python function call"]
    print(f"{'what':58s} {'ns/call':>9s} {'x empty':>8s}")
    for name, ns in results.items():
        print(f"{name:58s} {ns:9.1f} {ns / base:8.2f}")
    print()

    disabled = results["usdtkit disabled: if probe.enabled: probe(1, 'x')"]
    print(f"target: disabled usdtkit probe <= 1.5x empty call: {disabled / base:.2f}x "
          f"-> {'PASS' if disabled <= 1.5 * base else 'FAIL'}")
    if traced:
        ctypes_untraced = results["ctypes call of the site (untraced)"]
        per_hit = results["ctypes call of the site (traced)"] - ctypes_untraced
        ours = results["usdtkit traced: if probe.enabled: probe(1, 'x')"]
        print(f"kernel per-hit cost (traced - untraced ctypes call of the same site): {per_hit:.1f} ns")
        print(f"target: traced usdtkit probe <= ctypes call + per-hit = {ctypes_untraced + per_hit:.1f} ns: "
              f"{ours:.1f} ns -> {'PASS' if ours <= ctypes_untraced + per_hit else 'FAIL'}")
        expected = args.traced_number * args.repeat
        print(f"in-kernel counts: usdtkit {hits.get('usdtkit', 0)} (>= {2 * expected} expected: "
              f"the usdtkit row and the ctypes row fire the same site), stapsdt {hits.get('stapsdt', 0)} "
              f"(>= {expected})")
    else:
        print("traced rows skipped: run as root with bpftrace installed")
    app.close()
    sprovider.unload()


if __name__ == "__main__":
    main()
