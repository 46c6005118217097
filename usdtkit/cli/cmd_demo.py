"""``usdtkit demo``: the first thing to run. Starts the demo services, lists their probes, traces them
while driving load, and prints per-route latency histograms, status counts and a uretprobe latency."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Dict, List

from typing import TYPE_CHECKING

from ..errors import EnvironmentProblem, UsageError
from .examples import HelpFormatter, epilog

if TYPE_CHECKING:  # pragma: no cover
    from .. import demo_services
    from ..tracing.session import Session


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 1 and 10000")
    return value


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    parser = subparsers.add_parser(
        "demo", help="trace the bundled demo services and show real data",
        description="Start the demo services (C and Python, on loopback), list their probes, trace them "
        "while driving load, print per-route latency histograms, status counts and a uretprobe latency, "
        "then stop everything it started.",
        epilog=epilog("usdtkit demo --requests 5", "usdtkit demo --prometheus --requests 3"),
        formatter_class=HelpFormatter)
    parser.add_argument("-n", "--requests", type=_positive, default=25,
                        help="requests per route and service (25)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    parser.add_argument("--prometheus", action="store_true",
                        help="instead: run the demo service, usdtkit exporter and a real Prometheus "
                        "server (Debian's prometheus) and print PromQL answers")
    parser.set_defaults(func=run)


def _say(args: argparse.Namespace, text: str, end: str = "\n") -> None:
    if not args.json:
        print(text, end=end, file=sys.stderr if end == "\r" else sys.stdout, flush=True)


def _preflight() -> None:
    from .. import doctor

    failure = doctor.first_tracing_failure()
    if failure is not None:
        raise EnvironmentProblem(f"the demo cannot trace here: {failure.name}: {failure.detail}")


def _list_probes(args: argparse.Namespace, httpd: "demo_services.DemoService",
                 pysvc: "demo_services.DemoService") -> Dict[str, List[str]]:
    from .. import elf

    listing = {"demo_httpd": [], "demo_pyservice": []}
    for probe in elf.read_usdt_probes(httpd.binary):
        listing["demo_httpd"].append(f"{probe.qualified_name} ({len(probe.locations)} sites, "
                                     f"args {probe.locations[0].arguments})")
    for obj in elf.process_objects(pysvc.pid):
        for probe in elf.read_usdt_probes(obj.open_path) if "demo_pyservice" in obj.path else ():
            listing["demo_pyservice"].append(f"{probe.qualified_name} (args {probe.locations[0].arguments})")
    for service, probes in listing.items():
        _say(args, f"  {service}: {len(probes)} probes")
        for line in probes:
            _say(args, f"    {line}")
    return listing


def _attach(args: argparse.Namespace, stack: contextlib.ExitStack, label: str, *probes: str,
            **options: object) -> "Session":
    from ..tracing.api import trace

    _say(args, f"  attaching: {label} ...", end="")
    session = stack.enter_context(trace(*probes, events=False, **options))
    sites = len(session.attachments)
    _say(args, f" {sites} site{'s' if sites != 1 else ''}, {session.attach_seconds:.2f}s")
    return session


def _histograms(session: "Session") -> Dict[str, object]:
    out = {}
    for key, hist in sorted(session.histograms().items(), key=lambda kv: str(kv[0])):
        route = key[1] if isinstance(key, tuple) else key
        out[str(route)] = hist
    return out


def run(args: argparse.Namespace) -> int:
    from .. import demo_services

    _preflight()
    if args.prometheus:
        if args.json:
            raise UsageError("--prometheus prints PromQL answers as text; leave out --json")
        from . import demo_prometheus

        return demo_prometheus.run(args)
    _say(args, "usdtkit demo: two small HTTP services with USDT probes, traced with eBPF\n")
    _say(args, "building and starting the demo services ...")
    with contextlib.ExitStack() as stack:
        httpd = demo_services.start_httpd()
        stack.callback(httpd.stop)
        pysvc = demo_services.start_pyservice()
        stack.callback(pysvc.stop)
        _say(args, f"  demo_httpd     pid {httpd.pid}, http://127.0.0.1:{httpd.port}/  ({httpd.binary})")
        _say(args, f"  demo_pyservice pid {pysvc.pid}, http://127.0.0.1:{pysvc.port}/")
        _say(args, "\nprobes found (usdtkit list):")
        listing = _list_probes(args, httpd, pysvc)

        _say(args, "\nattaching:")
        c_bin = httpd.binary
        c_latency = _attach(args, stack, "demo_httpd request latency by route",
                            f"usdt:{c_bin}:demo_httpd:request__start", f"usdt:{c_bin}:demo_httpd:request__done",
                            pid=httpd.pid, latency=True, pair_keys=("arg0", "arg0"), hist="latency",
                            hist_by="str(arg2)")
        c_status = _attach(args, stack, "demo_httpd status counts", f"usdt:{c_bin}:demo_httpd:request__done",
                           pid=httpd.pid, count_by=["str(arg2)", "arg1"])
        c_render = _attach(args, stack, "demo_httpd render_items() uprobe+uretprobe latency",
                           f"uprobe:{c_bin}:render_items", pid=httpd.pid, latency=True, hist="latency")
        py_latency = _attach(args, stack, "demo_pyservice request latency by route",
                             "usdt::demo_pyservice:request__start", "usdt::demo_pyservice:request__done",
                             pid=pysvc.pid, latency=True, pair_keys=("arg0", "arg0"), hist="latency",
                             hist_by="str(arg1)")
        py_status = _attach(args, stack, "demo_pyservice status counts", "usdt::demo_pyservice:request__done",
                            pid=pysvc.pid, count_by=["str(arg1)", "arg2"])

        total = args.requests * len(demo_services.ROUTES) * 2
        _say(args, f"\ndriving load: {args.requests} requests x {len(demo_services.ROUTES)} routes x 2 services")
        started = time.monotonic()
        live = not args.json and sys.stderr.isatty()
        sent = demo_services.drive([httpd, pysvc], args.requests,
                                   progress=(lambda done, all_: _say(args, f"  {done}/{all_} requests", end="\r"))
                                   if live else None)
        _say(args, f"  {total}/{total} requests in {time.monotonic() - started:.1f}s")
        time.sleep(0.2)  # the last done probes fire after the reply is written

        results = {
            "probes": listing,
            "pids": {"demo_httpd": httpd.pid, "demo_pyservice": pysvc.pid},
            "requests_sent": sent,
            "demo_httpd": {"latency": _histograms(c_latency), "status": c_status.counts(),
                           "render_items": _histograms(c_render)},
            "demo_pyservice": {"latency": _histograms(py_latency), "status": py_status.counts()},
        }
        stats = {"demo_httpd": c_status.stats(), "demo_pyservice": py_status.stats()}
    return _report(args, results, stats, total)


def _report(args: argparse.Namespace, results: dict, stats: dict, total: int) -> int:
    from ..views.text import format_value

    traced = sum(results[s]["status"].total() for s in ("demo_httpd", "demo_pyservice"))
    if args.json:
        doc = {"requests_sent": results["requests_sent"], "requests_traced": traced, "services": {}}
        for service in ("demo_httpd", "demo_pyservice"):
            part = results[service]
            doc["services"][service] = {
                "latency_by_route": {route: h.to_json() for route, h in part["latency"].items()},
                "status_counts": part["status"].to_json(),
                "probes": results["probes"][service],
                "pid": results["pids"][service],
            }
        doc["services"]["demo_httpd"]["render_items_latency"] = {
            k: h.to_json() for k, h in results["demo_httpd"]["render_items"].items()}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0 if traced == total else 1
    for service in ("demo_httpd", "demo_pyservice"):
        part = results[service]
        print(f"\n=== {service}: request latency by route (request__start -> request__done, "
              "matched by request id, in the kernel)")
        for route, hist in part["latency"].items():
            print(f"\nroute {route}: {hist.total} requests, p50 <= {format_value(hist.percentile(50), 'ns')}, "
                  f"p99 <= {format_value(hist.percentile(99), 'ns')}")
            print(hist.render())
        print(f"\n=== {service}: requests by route and status (request__done)")
        for (probe, route, status), count in sorted(part["status"].items(), key=lambda kv: kv[0][1:]):
            print(f"  {route:<8} {status:>4}  {count}")
    print("\n=== demo_httpd: render_items() latency (uprobe + uretprobe)")
    for hist in results["demo_httpd"]["render_items"].values():
        print(f"{hist.total} calls, p50 <= {format_value(hist.percentile(50), 'ns')}")
        print(hist.render())
    lost = sum(s.lost_keys + s.lost_events for per in stats.values() for s in per.values())
    verdict = "matches" if traced == total else "DOES NOT match"
    print(f"\n{traced} requests traced; {verdict} the {total} requests sent; {lost} records lost.")
    print("Everything the demo started is stopped and every probe detached.")
    return 0 if traced == total else 1
