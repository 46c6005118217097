"""``usdtkit top``: a live table of hit rates per probe and process, with latency percentiles.

The screen is drawn with curses (the terminal library of Python's standard library) and refreshed every
interval until ``q`` or Ctrl-C; without a terminal (a pipe, a log file, ``--json``) the same table is
printed once per interval.  Running it is :mod:`usdtkit.cli.top_run`'s job.
"""
from __future__ import annotations

import argparse

from .cmd_trace import _MIN_INTERVAL, _common, _positive, _runner, _subcommand
from .examples import epilog

TOP_EXAMPLES = epilog(
    "usdtkit top -p PID",
    "usdtkit top -p PID -i 0.5 -d 2 usdt::hello:tick uprobe:libc:nanosleep",
    "usdtkit top -p PID -d 2 -l uprobe:libc:nanosleep usdt::hello:tick",
    "usdtkit top --json -d 2 -p PID -l usdt::demo_httpd:request__start -l usdt::demo_httpd:request__done",
)


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    parser = _subcommand(
        subparsers, "top", TOP_EXAMPLES, help="live table of hit rates per probe and process",
        description="A live table of hits per second per probe and process, refreshed every interval until q "
        "or Ctrl-C, with the p50 and p99 of a latency where one is timed (-l). Without a terminal, the table "
        "is printed every interval.")
    _common(parser, probes="*", probes_default="; with -p or -c and no PROBE: every USDT probe of that "
            "program's executable (usdt::*:*)")
    parser.add_argument("-i", "--interval", type=_positive(float, _MIN_INTERVAL), default=1.0,
                        help="seconds between refreshes (default 1)")
    parser.add_argument("-l", "--latency", action="append", default=[], metavar="PROBE",
                        help="also time this function (its uprobe and return), or, given twice, from a START "
                        "probe to a DONE probe of the same thread; p50 and p99 of the last interval appear "
                        "on the rows of the function or START probe, which is counted too")
    parser.set_defaults(func=_runner("run_top", "top_run"))
