#!/usr/bin/env python3
"""demo_pyservice: a small HTTP service on loopback that declares its own USDT probes with usdtkit.

    python demo_apps/pyservice.py [--port N] [--fail-every N] [--requests N]

Routes: ``/`` (a greeting), ``/items/N`` (N items), ``/slow`` (a 20 ms "database query" inside a span),
anything else 404.  ``--fail-every N`` answers every Nth request with 500 (a broken contract, for tests
that must catch it); ``--requests N`` exits after N requests.  Prints ``listening on PORT`` once ready.

Probes (provider ``demo_pyservice``):
    request__start(int64 id, str method, str path)
    request__done(int64 id, str route, int16 status, int64 duration_ns)
    slow_query_start(uint64 id) / slow_query_done(uint64 id, uint64 duration_ns, bool raised)  (a span)
    render_items_entry(uint64 id) / render_items_return(uint64 id, uint64 duration_ns, bool raised)
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from usdtkit.provider import Provider, int16

app = Provider("demo_pyservice")
request_start = app.probe("request__start", int, str, str)
request_done = app.probe("request__done", int, str, int16, int)
slow_query = app.span("slow_query")


@app.traced()
def render_items(count: int) -> str:
    return "".join(f"item {i}\n" for i in range(count))


def run_slow_query() -> str:
    with slow_query():
        time.sleep(0.02)
    return "slow answer 42\n"


class Handler(BaseHTTPRequestHandler):
    server_version = "demo_pyservice/1.0"
    ids = itertools.count(1)
    fail_every = 0

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        request_id = next(self.ids)
        started = time.perf_counter_ns()
        if request_start.enabled:
            request_start(request_id, "GET", self.path)
        if self.path == "/":
            route, status, body = "/", 200, "hello from demo_pyservice\n"
        elif self.path.startswith("/items/"):
            try:
                count = min(int(self.path[len("/items/"):]), 500)
            except ValueError:
                count = 0
            route, status, body = "/items", 200, render_items(count)
        elif self.path == "/slow":
            route, status, body = "/slow", 200, run_slow_query()
        else:
            route, status, body = "other", 404, "not found\n"
        if status == 200 and self.fail_every and request_id % self.fail_every == 0:
            status = 500
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        if request_done.enabled:
            request_done(request_id, route, status, time.perf_counter_ns() - started)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A small HTTP service on 127.0.0.1 with USDT probes "
                                     "declared through usdtkit.provider (provider demo_pyservice).")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--fail-every", type=int, default=0, help="answer every Nth request with 500")
    parser.add_argument("--requests", type=int, default=0, help="exit after this many requests (0: never)")
    args = parser.parse_args(argv)
    Handler.fail_every = args.fail_every
    app.load()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    print(f"probes in {app.path}", flush=True)
    try:
        handled = 0
        while not args.requests or handled < args.requests:
            server.handle_request()
            handled += 1
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        time.sleep(0.05)  # let the last handler threads finish firing before the probes go
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
