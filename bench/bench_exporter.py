"""Benchmarks of ``usdtkit exporter`` (run as root from the repository):

1. ``scrape``: wall time of one ``/metrics`` scrape with 10,000 series (a counter by request id of the
   demo service after 10,000 requests), and the exporter's own ``scrape_duration_seconds``;
2. ``idle``: the exporter's CPU time over 20 s without load or scrapes (from ``/proc/PID/stat``);
3. ``per_hit``: ns per iteration of ``sdt_bench loop N`` (a tight loop over one USDT site): untraced,
   counted by an exporter counter, and counted by ``bpftrace`` in the same run; each tracer's count
   must equal N.

Every process started is stopped on every exit path.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from usdtkit import demo_services  # noqa: E402

BUILD = os.path.join(ROOT, "bench", "programs", "build")


class Exporter:
    def __init__(self, config: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "usdtkit.cli.main", "exporter", "--config", config,
                                      "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONPATH=ROOT))
        for line in self.proc.stderr:
            if "serving http://" in line:
                self.port = int(line.rsplit(":", 1)[1].split("/")[0])
                return
        raise SystemExit("the exporter did not start")

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as reply:
            return reply.read().decode()

    def value(self, text: str, series: str) -> float:
        match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.proc.stderr.close()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write(folder: str, text: str) -> str:
    path = os.path.join(folder, "exporter.yaml")
    with open(path, "w") as handle:
        handle.write(text)
    return path


def scrape_and_idle(folder: str, series: int, idle_s: float) -> Dict[str, float]:
    httpd = demo_services.start_httpd()
    exporter = None
    try:
        exporter = Exporter(write(folder, f"""metrics:
  - name: requests_by_id
    type: counter
    probe: usdt:{httpd.binary}:demo_httpd:request__done
    labels: {{id: arg0}}
    series_limit: {series * 2}
    pid: {httpd.pid}
"""))
        demo_services.drive([httpd], series // 4, routes=["/", "/items/40", "/missing", "/"])
        walls: List[float] = []
        for _ in range(10):
            started = time.monotonic()
            text = exporter.scrape()
            walls.append(time.monotonic() - started)
        found = len(re.findall(r"^requests_by_id_total\{", text, re.M))
        assert found == series, (found, series)
        before = cpu_seconds(exporter.proc.pid)  # read from /proc: a scrape would add its own cost
        time.sleep(idle_s)
        after = cpu_seconds(exporter.proc.pid)
        return {"series": found, "scrape_ms": statistics.median(walls) * 1000,
                "collect_ms": exporter.value(text, "usdtkit_exporter_scrape_duration_seconds") * 1000,
                "body_kib": len(text) / 1024, "idle_cpu_percent": (after - before) / idle_s * 100}
    finally:
        if exporter is not None:
            exporter.stop()
        httpd.stop()


def loop(binary: str, n: int) -> float:
    """ns per iteration of ``sdt_bench loop n``."""
    proc = subprocess.Popen([binary, "loop", str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate("go\n", timeout=120)
    return float(re.search(r"ns_per_iter=(\S+)", out).group(1))


def per_hit(folder: str, n: int) -> Dict[str, float]:
    os.makedirs(BUILD, exist_ok=True)
    binary = os.path.join(BUILD, "sdt_bench_exporter")
    subprocess.run(["gcc", "-O2", "-g", "-o", binary, os.path.join(ROOT, "bench", "programs", "sdt_bench.c")],
                   check=True)
    out = {"untraced_ns": loop(binary, n)}
    exporter = Exporter(write(folder, f"""metrics:
  - name: bench_hits
    type: counter
    probe: usdt:{binary}:bench:hit
"""))
    try:
        out["exporter_ns"] = loop(binary, n)
        time.sleep(0.5)
        counted = exporter.value(exporter.scrape(), "bench_hits_total")
        assert counted == n, (counted, n)
    finally:
        exporter.stop()
    if shutil.which("bpftrace"):
        tracer = subprocess.Popen(["bpftrace", "-e", f'BEGIN {{ printf("ready\\n"); }} usdt:{binary}:bench:hit '
                                   "{ @c = count(); }"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            for line in tracer.stdout:
                if "ready" in line:
                    break
            out["bpftrace_ns"] = loop(binary, n)
            tracer.send_signal(signal.SIGINT)
            text = tracer.stdout.read()
            assert f"@c: {n}" in text, text
        finally:
            if tracer.poll() is None:
                tracer.kill()
            tracer.wait()
            tracer.stdout.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 series, 5 s idle, 200,000 hits")
    args = parser.parse_args()
    series, idle, hits = (1000, 5.0, 200_000) if args.quick else (10_000, 20.0, 2_000_000)
    folder = tempfile.mkdtemp(prefix="usdtkit-bench-")
    try:
        scrape = scrape_and_idle(folder, series, idle)
        print(f"scrape: {scrape['series']:.0f} series, {scrape['scrape_ms']:.0f} ms per scrape (median of 10), "
              f"{scrape['collect_ms']:.0f} ms reading maps, {scrape['body_kib']:.0f} KiB")
        print(f"idle: {scrape['idle_cpu_percent']:.2f}% of one CPU over {idle:.0f} s")
        hit = per_hit(folder, hits)
        print(f"per_hit: untraced {hit['untraced_ns']:.1f} ns, exporter counter {hit['exporter_ns']:.1f} ns"
              + (f", bpftrace count() {hit['bpftrace_ns']:.1f} ns" if "bpftrace_ns" in hit else ", bpftrace missing")
              + f" per iteration ({hits} hits, every count checked)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
