"""``usdtkit pycalls``: calls, total and self time, p50 and p99 of each function of a Python process.

The main use is ``-p PID``: a service started once under ``python -m usdtkit.instrument`` runs at full
speed until someone asks, and its functions are profiled for as long as this command runs.  Times
come from usdtkit.instrument's ``pycalls`` probes; an interpreter without them but with its own
``python:function__return`` probe (Debian's ``python3.11``) gives calls per function only.  The
work is done by :mod:`usdtkit.tracing.pycalls`; printing by :mod:`usdtkit.cli.pycalls_run`.
"""
from __future__ import annotations

import argparse

from . import pictures
from .cmd_trace import _count, _positive, _runner, _string_size, _subcommand
from .examples import epilog

PYCALLS_EXAMPLES = epilog(
    "usdtkit pycalls -p PID -d 1",
    "usdtkit pycalls -p PID --top 3 --by-thread",
    "usdtkit pycalls --json -p PID -d 1",
    "usdtkit pycalls -p PID -d 1 --flamegraph calls.svg --folded calls.folded",
    "usdtkit pycalls --top 5 -c \"/usr/bin/python3.11 -c 'import json; [json.dumps(i) for i in range(2000)]'\"",
)


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    parser = _subcommand(
        subparsers, "pycalls", PYCALLS_EXAMPLES, help="calls, total and self time, p50/p99 per Python function",
        description="Calls per function of a Python process, with total and self time and the p50 and p99 of a "
        "call, from usdtkit.instrument's pycalls probes (python -m usdtkit.instrument script.py); where the "
        "process has only CPython's own python:function__return probe, calls per function. Sorted by total "
        "time (by calls without times).")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-p", "--pid", type=_positive(int), help="profile this running process")
    where.add_argument("-c", "--command",
                       help="start this command and profile it from its first instruction (quote it as one "
                       "argument; its standard output goes to stderr)")
    parser.add_argument("-d", "--duration", type=_positive(float), help="stop after this many seconds")
    parser.add_argument("--top", type=_count, metavar="N",
                        help="show the N costliest functions (default: 20 in text, all in JSON; 0: all); how "
                        "many more there are is said")
    parser.add_argument("--by-thread", action="store_true", help="one row per function and thread")
    parser.add_argument("--no-gc", action="store_true",
                        help="do not time garbage collections (python:gc__start/done; one program less to load)")
    parser.add_argument("--source", choices=("pycalls", "python"),
                        help="read the pycalls probes of usdtkit.instrument (with -c: wait for the command to "
                        "declare them) or the python:function__return probe of CPython itself; default: pycalls "
                        "where the process has them (with -c: where it runs under usdtkit.instrument), else python")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    _string_size(parser, "function name and file name")
    pictures.add_arguments(parser, "the time spent along each call path (self time, in ns)",
                           "call path pictures (usdtkit.instrument's pycalls probes: every call and return is read "
                           "in user space)")
    parser.set_defaults(func=_runner("run_pycalls", "pycalls_run"))
