"""Cost of usdtkit.instrument: untraced (startup included), idle, and traced per call, next to
cProfile and a no-op ``sys.setprofile`` in the same run.

    sudo .venv/bin/python bench/bench_instrument.py [--quick] [--python PATH]... [--cpu N]

1. ``untraced``: wall time of a whole process making 30 million calls of a one-line function
   (``python calls.py N`` against ``python -m usdtkit.instrument calls.py N``, startup and exit
   included), median of the repetitions, run alternately.  Goal: at most 1.10x.
2. ``idle``: CPU time of an instrumented process that sleeps (its watcher thread polling the
   semaphores), from ``time.process_time()`` over the sleep.
3. ``per call``: inside one instrumented process, the median time of a loop of calls: plain (hooks
   off), under a no-op ``sys.setprofile``, under ``cProfile``, with usdtkit's hooks on but no tracer
   (the semaphore set by hand: the Python side alone), traced on ``function__return`` (what
   ``usdtkit pycalls`` attaches), and traced on both probes; each row's cost per call is its time
   minus the plain loop's, per call.  Traced rows count in the kernel (no events), and the count
   must equal the calls made.

Every Python found (this one, python3.12+ on PATH or under pyenv) is measured unless ``--python``
says which.  Not a test: the numbers depend on the machine and its noise.
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
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from usdtkit.tracing.api import trace  # noqa: E402

CALLS = '''\
import sys

def f(x):
    return x

def loop(n):
    for i in range(n):
        f(i)
'''

WORKER = CALLS + '''
import cProfile, json, statistics, time
import usdtkit.instrument

def timed(n, repeat):
    samples = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        loop(n)
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples)

def noop(frame, event, arg):
    pass

def main():
    n, repeat, idle = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    now = usdtkit.instrument.current()
    out = {"python": sys.version.split()[0], "hooks": now.hooks}
    start = time.process_time()
    time.sleep(idle)
    out["idle_cpu_s"] = time.process_time() - start
    out["plain"] = timed(n, repeat)
    sys.setprofile(noop)
    out["setprofile"] = timed(n, repeat)
    sys.setprofile(None)
    profile = cProfile.Profile()
    profile.enable()
    out["cprofile"] = timed(n, repeat)
    profile.disable()
    entry, ret = now.probes
    ret.enabled.value = 1  # as if traced, with no tracer: the hooks' own cost, firing into the NOP site
    assert now.wait_traced(10)
    out["hooks_untraced"] = timed(n, repeat)
    ret.enabled.value = 0
    for name in ("traced_return", "traced_both"):
        while now.traced:
            time.sleep(0.01)
        print("attach", name, flush=True)
        sys.stdin.readline()  # attached: the semaphore rises just before the program is attached
        assert now.wait_traced(60)
        out[name] = timed(n, repeat)
        print("measured", flush=True)
    print(json.dumps(out), flush=True)

main()
'''

ENTRY = "usdt::pycalls:function__entry"
RETURN = "usdt::pycalls:function__return"


def pythons(given: List[str]) -> List[str]:
    if given:
        return given
    found = [sys.executable]
    seen = set()
    for path in [shutil.which(f"python3.{m}") for m in range(12, 20)] + sorted(
            glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3"))):
        if not path:
            continue
        version = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] >= (3, 12), sys.version[:4])"],
                                 capture_output=True, text=True).stdout.split()
        if version[:1] == ["True"] and version[1] not in seen:
            seen.add(version[1])
            found.append(path)
    return found


def environment(folder: str) -> Dict[str, str]:
    """This checkout and the stapsdt module (one Python file) on the path of any interpreter."""
    import stapsdt

    shutil.copy(stapsdt.__file__, os.path.join(folder, "stapsdt.py"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("USDTKIT_INSTRUMENT")}
    return dict(env, PYTHONPATH=f"{ROOT}{os.pathsep}{folder}", PYTHONDONTWRITEBYTECODE="1")


def untraced(python: str, folder: str, env: Dict[str, str], calls: int, repeat: int,
             cpu: Optional[int]) -> Dict[str, float]:
    """Median wall seconds of the whole process, plain and instrumented, run alternately."""
    script = os.path.join(folder, "calls.py")
    commands = {"plain": [python, script, str(calls)],
                "instrumented": [python, "-m", "usdtkit.instrument", script, str(calls)]}
    samples: Dict[str, List[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True, cwd=folder,
                           preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None)
            samples[name].append(time.perf_counter() - start)
    return {**{name: statistics.median(values) for name, values in samples.items()},
            **{f"{name}_min": min(values) for name, values in samples.items()}}


def per_call(python: str, folder: str, env: Dict[str, str], calls: int, repeat: int, idle: float,
             cpu: Optional[int]) -> dict:
    """The worker's measurements; the tracer attaches when it asks."""
    proc = subprocess.Popen([python, "-m", "usdtkit.instrument", os.path.join(folder, "worker.py"), str(calls),
                             str(repeat), str(idle)], env=env, cwd=folder, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None)
    hits: Dict[str, int] = {}
    try:
        for line in proc.stdout:
            words = line.split()
            if words[:1] != ["attach"]:
                result = json.loads(line)
                break
            probes = [RETURN] if words[1] == "traced_return" else [ENTRY, RETURN]
            with trace(*probes, pid=proc.pid, events=False, count_by=[]) as session:
                proc.stdin.write("attached\n")
                proc.stdin.flush()
                assert proc.stdout.readline() == "measured\n"
                session.drain()
                hits[words[1]] = sum(stats.hits for stats in session.stats().values())
        else:
            raise SystemExit(f"{python}: the worker ended early")
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
        proc.stdout.close()
    result["hits"] = hits
    return result


def report(python: str, untimed: Dict[str, float], measured: dict, calls: int, traced_calls: int,
           repeat: int, idle: float) -> None:
    ratio = untimed["instrumented"] / untimed["plain"]
    verdict = ("PASS" if ratio <= 1.10 else "FAIL") if calls >= 30_000_000 else "set for 30,000,000 calls"
    print(f"== Python {measured['python']} ({python}), hooks: {measured['hooks']}")
    print(f"untraced, {calls:,} calls, whole process (startup included), median (min) of {repeat}:")
    print(f"  python calls.py                          {untimed['plain']:8.3f} s ({untimed['plain_min']:.3f})")
    print(f"  python -m usdtkit.instrument calls.py    {untimed['instrumented']:8.3f} s "
          f"({untimed['instrumented_min']:.3f})   {ratio:.3f}x "
          f"({untimed['instrumented_min'] / untimed['plain_min']:.3f}x)  goal <= 1.10x: {verdict}")
    polls = idle / 0.1
    print(f"idle: {measured['idle_cpu_s'] * 1e3:.2f} ms CPU over {idle:.0f} s asleep "
          f"({measured['idle_cpu_s'] / polls * 1e6:.1f} us per poll, {measured['idle_cpu_s'] / idle * 100:.3f}% of a CPU)")
    plain = measured["plain"] / traced_calls
    rows = [("plain call (hooks off, untraced)", "plain"), ("no-op sys.setprofile", "setprofile"),
            ("cProfile", "cprofile"), ("usdtkit hooks on, no tracer (semaphore by hand)", "hooks_untraced"),
            ("usdtkit traced: function__return, in-kernel count", "traced_return"),
            ("usdtkit traced: entry + return, in-kernel count", "traced_both")]
    print(f"per call, loop of {traced_calls:,} calls of f(x), median of {repeat}:")
    print(f"  {'':52s} {'ns/call':>9s} {'x plain':>8s} {'added ns':>9s}")
    for label, key in rows:
        ns = measured[key] / traced_calls
        print(f"  {label:52s} {ns:9.1f} {ns / plain:8.2f} {ns - plain:9.1f}")
    loop_calls = traced_calls * repeat
    for key, per_call_hits in (("traced_return", 1), ("traced_both", 2)):
        got = measured["hits"].get(key, 0)
        # f's calls, plus timed()'s loop() calls and its own return (entry: the same, once each)
        want = per_call_hits * (loop_calls + repeat + 1)
        print(f"  {key}: {got:,} hits counted in the kernel, {want:,} expected -> "
              f"{'OK' if got == want else 'MISMATCH'}")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 million calls, 200,000 per traced loop, 3 repetitions")
    parser.add_argument("--python", action="append", default=[], help="the interpreter(s) to measure")
    parser.add_argument("--cpu", type=int, default=None, help="pin the measured processes to this CPU")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the traced rows attach uprobes")
    calls, traced_calls, repeat, idle = ((3_000_000, 200_000, 3, 2.0) if args.quick
                                         else (30_000_000, 1_000_000, 5, 10.0))
    folder = tempfile.mkdtemp(prefix="usdtkit-bench-")
    try:
        env = environment(folder)
        with open(os.path.join(folder, "calls.py"), "w") as out:
            out.write(CALLS + "\nloop(int(sys.argv[1]))\n")
        with open(os.path.join(folder, "worker.py"), "w") as out:
            out.write(WORKER)
        for python in pythons(args.python):
            untimed = untraced(python, folder, env, calls, repeat, args.cpu)
            measured = per_call(python, folder, env, traced_calls, repeat, idle, args.cpu)
            report(python, untimed, measured, calls, traced_calls, repeat, idle)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
