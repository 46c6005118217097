#!/usr/bin/env python3
"""demo_orders: a program that declares its USDT probes when it starts and fires them at once.

    python3 demo_apps/orders.py [N] [--workers W]

Provider ``demo_orders``, probe ``order(int64 id, str item)``: fired N times (default 3) as soon as the
provider is loaded, then the program exits.  With ``--workers W``, W forked workers each declare the
provider and fire N orders (ids from 1000 times the worker's number).  The probes exist only once the
program runs, so a tracer attached afterwards would miss the first orders: ``usdtkit trace -c`` is told
when each provider is loaded and attaches before its first hit (see usdtkit.tracing.late).
"""
from __future__ import annotations

import argparse
import os

from usdtkit.provider import Provider

ITEMS = ("espresso", "latte", "tea")


def serve(first: int, count: int) -> None:
    """Declare the provider, then fire ``count`` orders at once."""
    app = Provider("demo_orders")
    order = app.probe("order", int, str)
    app.load()
    for number in range(count):
        order(first + number, ITEMS[number % len(ITEMS)])
    app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, nargs="?", default=3, help="orders to fire (per worker)")
    parser.add_argument("--workers", type=int, default=0, help="fork this many workers, each firing")
    args = parser.parse_args()
    if not args.workers:
        serve(0, args.count)
        return
    workers = []
    for number in range(1, args.workers + 1):
        pid = os.fork()
        if pid == 0:
            serve(1000 * number, args.count)
            os._exit(0)
        workers.append(pid)
    for pid in workers:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
