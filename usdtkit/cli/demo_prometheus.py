"""``usdtkit demo --prometheus``: the demo service, ``usdtkit exporter`` and a real Prometheus together.

It starts ``demo_httpd``, an exporter with a counter of requests by route and status and a latency
histogram by route, and a Prometheus server on loopback scraping it every second; drives two rounds of
load (so rates have an increase to show), then prints the answers of PromQL queries and checks that
Prometheus counted exactly the requests sent.  Everything it started is stopped on every exit path.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from ..errors import EnvironmentProblem, TargetError

WINDOW = "30s"
QUERIES = (
    ("request rate by route (per second)", f"sum by (route) (rate(demo_requests_total[{WINDOW}]))", ""),
    ("p99 latency by route",
     f"histogram_quantile(0.99, sum by (le, route) (rate(demo_request_duration_seconds_bucket[{WINDOW}])))", "s"),
    ("requests by route and status", "sum by (route, status) (demo_requests_total)", ""),
)


def config_text(binary: str, pid: Optional[int] = None) -> str:
    """The demo's metrics; with ``pid``, of that process only (a binary given by path is traced in every
    process that runs it, and other demo services may be running)."""
    only = f"    pid: {pid}\n" if pid is not None else ""
    return f"""\
metrics:
  - name: demo_requests
    help: Requests served by demo_httpd, by route and status
    type: counter
    probe: usdt:{binary}:demo_httpd:request__done
    labels: {{route: str(arg2), status: arg1}}
{only}  - name: demo_request_duration_seconds
    help: demo_httpd request latency by route
    type: histogram
    start: usdt:{binary}:demo_httpd:request__start
    done: usdt:{binary}:demo_httpd:request__done
    key: arg0
    labels: {{route: str(arg2)}}
{only}"""


def _start_exporter(config: str, stack: contextlib.ExitStack) -> int:
    """Start ``usdtkit exporter`` on a free loopback port; returns the port once it serves."""
    proc = subprocess.Popen([sys.executable, "-m", "usdtkit.cli.main", "exporter", "--config", config,
                             "--listen", "127.0.0.1:0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]

    stack.callback(stop)
    said: List[str] = []
    for line in proc.stderr:  # type: ignore[union-attr]
        said.append(line.strip())
        if "serving http://" in line:
            return int(line.rsplit(":", 1)[1].split("/")[0])
    raise TargetError(f"the exporter did not start: {' / '.join(said[-3:]) or 'no output'}")


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def run(args: argparse.Namespace) -> int:
    from .. import demo_services

    if not os.path.exists(demo_services.PROMETHEUS):
        raise EnvironmentProblem(f"--prometheus needs {demo_services.PROMETHEUS} (apt-get install prometheus)")
    print("usdtkit demo --prometheus: demo_httpd, usdtkit exporter and a real Prometheus, on loopback\n", flush=True)
    with contextlib.ExitStack() as stack:
        workdir = tempfile.mkdtemp(prefix="usdtkit-demo-")
        stack.callback(shutil.rmtree, workdir, True)
        httpd = demo_services.start_httpd()
        stack.callback(httpd.stop)
        config = os.path.join(workdir, "exporter.yaml")
        with open(config, "w") as handle:
            handle.write(config_text(httpd.binary, httpd.pid))
        port = _start_exporter(config, stack)
        prometheus = demo_services.PrometheusServer(f"127.0.0.1:{port}", workdir)
        stack.callback(prometheus.stop)
        print(f"  demo_httpd  pid {httpd.pid}, http://127.0.0.1:{httpd.port}/")
        print(f"  exporter    http://127.0.0.1:{port}/metrics  (config: {config})")
        print(f"  prometheus  http://127.0.0.1:{prometheus.port}/  (scrapes every second)", flush=True)
        if not _wait(lambda: prometheus.query('up{job="usdtkit"}') == {"": 1.0}, 30):
            raise TargetError("prometheus could not scrape the exporter")
        sent: Dict[str, int] = {}
        for _ in range(2):
            for service, seen in demo_services.drive([httpd], args.requests).items():
                for key, count in seen.items():
                    sent[key] = sent.get(key, 0) + count
            time.sleep(2)  # two scrapes between the rounds: a rate needs an increase to show
        total = sum(sent.values())
        print(f"\ndriving load: 2 rounds of {args.requests} requests x {len(demo_services.ROUTES)} routes "
              f"({total} requests)")
        stored = lambda: sum(prometheus.query("demo_requests_total").values())  # noqa: E731
        _wait(lambda: stored() == total, 30)
        print("\nPromQL answers:")
        for title, promql, unit in QUERIES:
            print(f"\n  {title}:\n    {promql}")
            for labels, value in sorted(prometheus.query(promql).items()):
                shown = f"{value * 1000:.3f} ms" if unit == "s" else f"{value:g}"
                print(f"      {labels.replace(',', ' '):<14} {shown}")
        counted = stored()
    verdict = "matches" if counted == total else "DOES NOT match"
    print(f"\n{counted:g} requests in Prometheus; {verdict} the {total} requests sent.")
    print("Everything the demo started is stopped and every probe detached.")
    return 0 if counted == total else 1
