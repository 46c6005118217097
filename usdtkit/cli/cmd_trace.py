"""``usdtkit trace``, ``count``, ``hist`` and ``latency``: attach, collect, print.

Conventions follow bcc and bpftrace: ``-p PID``, ``-c CMD`` (start a command and trace it from its first
instruction), ``-d SECONDS``, ``-i INTERVAL`` (print and keep going), ``--json``.  Ctrl-C or SIGTERM
stop the trace and print what was collected so far; a target that exits ends the trace the same way.
Probe specs take bpftrace's form: ``usdt:BINARY:PROVIDER:NAME``, ``uprobe:BINARY:FUNCTION``,
``uretprobe:BINARY:FUNCTION``; BINARY may be a path or a library name, or empty with ``-p``/``-c``.
"""
from __future__ import annotations

import argparse
import importlib
import math
from typing import Any, Callable


def _runner(name: str) -> Callable[[argparse.Namespace], int]:
    """The command's implementation in :mod:`usdtkit.cli.trace_run`, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        module: Any = importlib.import_module(f"{__package__}.trace_run")
        return getattr(module, name)(args)

    return run


def _positive(kind: type, minimum: float = 0.0) -> Callable[[str], object]:
    """A parser of positive, finite numbers (at least ``minimum`` when given)."""

    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is too small (at least {minimum:g})")
        if kind is float and value > 315_360_000:  # ten years: a typo, not a duration
            raise argparse.ArgumentTypeError(f"{text!r} is too large")
        return value

    return parse


_MIN_INTERVAL = 0.01


def _interval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--interval", type=_positive(float, _MIN_INTERVAL),
                        help="print what changed in each INTERVAL seconds, and keep going")
    parser.add_argument("--cumulative", action="store_true", help="with -i, print running totals instead")


def _string_size(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--string-size", type=_positive(int), metavar="N",
                        help=f"bytes kept of each {what} (default 128, at most 256); a longer string is shown "
                        "cut, with a trailing …")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("probes", nargs="+", metavar="PROBE",
                        help="usdt:BINARY:PROVIDER:NAME, uprobe:BINARY:FUNCTION or uretprobe:BINARY:FUNCTION")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-p", "--pid", type=_positive(int), help="trace this process only")
    where.add_argument("-c", "--command",
                       help="start this command and trace it from its first instruction (quote it as one "
                       "argument; its standard output goes to stderr)")
    parser.add_argument("-d", "--duration", type=_positive(float), help="stop after this many seconds")
    parser.add_argument("-f", "--filter", action="append", default=[], metavar="EXPR",
                        help="keep hits where EXPR holds: 'arg0 > 5', 'comm == nginx', 'tid != 7' (repeatable)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--unsafe", action="store_true",
                        help="allow uprobes at FUNC+OFFSET or addresses usdtkit cannot verify to start an "
                        "instruction (a wrong one corrupts the traced program)")


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    trace = subparsers.add_parser("trace", help="print every hit with its arguments",
                                  description="Print one line per probe hit with its arguments.")
    _common(trace)
    trace.add_argument("-s", "--string", action="append", default=[], metavar="argN",
                       help="read this pointer argument as a NUL-terminated string (repeatable)")
    _string_size(trace, "string argument")
    trace.add_argument("-n", "--max-events", type=_positive(int), help="stop after this many events")
    trace.set_defaults(func=_runner("run_trace"))

    count = subparsers.add_parser("count", help="count hits by probe and by fields, in the kernel",
                                  description="Count hits in the kernel, keyed by probe and optional fields.")
    _common(count)
    count.add_argument("-b", "--by", default="", metavar="FIELDS",
                       help="comma-separated key fields: pid, tid, comm, cpu, arg0..arg11, str(argN), retval, ustack")
    count.add_argument("--top", type=int, default=50, metavar="N",
                       help="show the N largest counts (default 50; 0: all); the rest are counted and said")
    _string_size(count, "str(argN) key")
    _interval(count)
    count.set_defaults(func=_runner("run_count"))

    hist = subparsers.add_parser("hist", help="histogram of an argument or return value",
                                 description="A log2 (default) or linear histogram, built in the kernel.")
    _common(hist)
    hist.add_argument("-v", "--value", default="arg0", help="the field: arg0..arg11 or retval (arg0)")
    hist.add_argument("--linear", metavar="LOW,HIGH,STEP", help="linear buckets instead of log2")
    hist.add_argument("--by", metavar="FIELD", help="one histogram per value of FIELD (e.g. str(arg2), arg1)")
    _string_size(hist, "str(argN) key")
    _interval(hist)
    hist.set_defaults(func=_runner("run_hist"))

    latency = subparsers.add_parser(
        "latency", help="latency of a function, or between two USDT probes",
        description="With one uprobe:BINARY:FUNCTION, time every call (entry to return, per thread, "
        "recursion-safe). With two USDT probes START DONE, time start to done, matched by thread or by "
        "--key (e.g. --key arg0 or --key arg0,arg1).")
    _common(latency)
    latency.add_argument("-k", "--key", help="match start and done by these arguments (START[,DONE])")
    latency.add_argument("--linear", metavar="LOW,HIGH,STEP", help="linear buckets (ns) instead of log2")
    latency.add_argument("--by", metavar="FIELD",
                         help="one histogram per value of FIELD of the done probe (e.g. str(arg2))")
    _string_size(latency, "str(argN) key")
    _interval(latency)
    latency.set_defaults(func=_runner("run_latency"))


