"""``usdtkit exporter``: serve Prometheus metrics from probes, as described by a YAML file."""
from __future__ import annotations

import argparse
import sys
from typing import Tuple

from ..errors import ConfigError, UsageError, UsdtkitError
from .examples import HelpFormatter, epilog

DEFAULT_LISTEN = "127.0.0.1:9435"
EXAMPLE_CONFIG = "demo_apps/exporter.yaml"


def _listen(text: str) -> Tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]"), int(port)


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    parser = subparsers.add_parser(
        "exporter", help="serve Prometheus metrics from probes (a long-running service)",
        description="Attach the probes a YAML file describes and serve counters and histograms at "
        "http://HOST:PORT/metrics, read from the kernel at each scrape. SIGHUP reloads the file "
        "(unchanged metrics keep their values); SIGTERM or SIGINT detaches everything and exits 0.",
        epilog=epilog(f"usdtkit exporter --config {EXAMPLE_CONFIG} --check",
                      f"usdtkit exporter --config {EXAMPLE_CONFIG} --grafana-dashboard"),
        formatter_class=HelpFormatter)
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the metrics to export (YAML; see README, section Exporter)")
    parser.add_argument("--listen", type=_listen, default=_listen(DEFAULT_LISTEN), metavar="HOST:PORT",
                        help=f"where to serve /metrics (default {DEFAULT_LISTEN}: loopback only; give "
                        "0.0.0.0:PORT to serve other hosts)")
    parser.add_argument("--check", action="store_true",
                        help="validate the file and find every probe, attach nothing, and exit")
    parser.add_argument("--grafana-dashboard", action="store_true",
                        help="print a Grafana dashboard (JSON to import) with panels for every metric, and exit")
    parser.set_defaults(func=run)


def check(path: str) -> str:
    """Validate ``path`` and resolve each metric's probes now; the summary line on success."""
    from ..exporter.config import load_config
    from ..exporter.metrics import to_request
    from ..plan.plan import make_plan

    config = load_config(path)
    sites = 0
    for spec in config.metrics:
        try:
            plan = make_plan(to_request(spec))
        except UsdtkitError as exc:
            raise ConfigError(f"{path}:{spec.probe_line}: metric {spec.name}: {exc}") from None
        sites += sum(len(p.sites) for p in plan.probes)
        plan.close()
    return f"{path}: {len(config.metrics)} metrics, {sites} probe sites found"


def run(args: argparse.Namespace) -> int:
    if args.check and args.grafana_dashboard:
        raise UsageError("give --check or --grafana-dashboard, not both")
    if args.check:
        print(check(args.config))
        return 0
    if args.grafana_dashboard:
        from ..exporter.config import load_config
        from ..exporter.dashboard import render

        print(render(load_config(args.config)))
        return 0
    import logging  # here, not at the top: every usdtkit command builds this parser

    from ..exporter.config import load_config
    from ..exporter.service import Exporter

    host, port = args.listen
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="usdtkit exporter: %(message)s")
    exporter = Exporter(load_config(args.config), host, port)

    def ready(service: "Exporter") -> None:
        logging.getLogger("usdtkit.exporter").info("serving http://%s:%d/metrics", service.host, service.port)

    try:
        return exporter.run(ready)
    except OSError as exc:  # the listen address is taken, not ours, or not an address
        raise UsageError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
