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

from .examples import HelpFormatter, epilog


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


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


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
                        help="usdt:BINARY:PROVIDER:NAME, uprobe:BINARY:FUNCTION or uretprobe:BINARY:FUNCTION; "
                        "names may be globs (usdt:BINARY:hello:*, uprobe:libc:mall*) and C++ functions go by "
                        "their demangled names (uprobe:BINARY:cpp:ns::Cache::*)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-p", "--pid", type=_positive(int), help="trace this process only")
    where.add_argument("-c", "--command",
                       help="start this command and trace it from its first instruction (quote it as one "
                       "argument; its standard output goes to stderr); usdt::PROVIDER:NAME it declares at run "
                       "time is attached as it loads the provider")
    parser.add_argument("-F", "--follow", action="store_true",
                        help="with -p or -c: trace its descendants too, running or started later (the trace "
                        "still ends when PID or CMD exits)")
    parser.add_argument("-d", "--duration", type=_positive(float), help="stop after this many seconds")
    parser.add_argument("-f", "--filter", action="append", default=[], metavar="EXPR",
                        help="keep hits where EXPR holds (the predicate language of bpftrace): integers with "
                        "+ - * / %% & | ^ << >> ~, comparisons, && || !, parentheses and casts like (int32); "
                        "argN, str(argN), str(argN, LEN), pid tid uid gid cpu cgroup comm, retval on uretprobes; "
                        "strings quoted, e.g. 'str(arg1) == \"reader\" && arg0 != 2' (repeatable: all must hold)")
    parser.add_argument("--cgroup", metavar="PATH",
                        help="keep only hits from tasks in this cgroup v2 directory (a container, a service)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--max-probes", type=_positive(int), metavar="N",
                        help="attach up to N probes when patterns match many (default 512, like bpftrace)")
    parser.add_argument("--unsafe", action="store_true",
                        help="allow uprobes at FUNC+OFFSET or addresses usdtkit cannot verify to start an "
                        "instruction (a wrong one corrupts the traced program)")


TRACE_EXAMPLES = epilog(
    "usdtkit trace -s arg1 -c 'demo_apps/build/hello_usdt 3 reader' usdt::hello:greet",
    "usdtkit trace -p PID -n 5 -f 'tid != 7' usdt::hello:tick",
    "usdtkit trace --json --buffer-size 256M -p PID usdt::hello:tick",
    "usdtkit trace --json -c 'demo_apps/build/hello_usdt 2' uretprobe:libc:nanosleep",
    "usdtkit trace --string-size 200 -s arg1 -c 'demo_apps/build/hello_usdt 1 reader' usdt::hello:greet",
    "usdtkit trace -F -c \"sh -c 'demo_apps/build/hello_usdt 2; true'\" usdt:demo_apps/build/hello_usdt:hello:tick",
    "usdtkit trace -c 'demo_apps/build/hello_usdt 2' 'usdt::hello:*'",
    "usdtkit trace -s arg1 -c '.venv/bin/python3 demo_apps/orders.py 3' usdt::demo_orders:order",
)
COUNT_EXAMPLES = epilog(
    "usdtkit count -c 'demo_apps/build/hello_usdt 5' usdt::hello:greet usdt::hello:tick",
    "usdtkit count --by arg1 -f 'arg0 > 5' -c 'demo_apps/build/hello_usdt 8' usdt::hello:tick",
    "usdtkit count --by 'str(arg1)' -c '/usr/bin/python3.11 -c pass' usdt::python:function__entry",
    "usdtkit count -p PID -d 1 --by comm,tid -f 'comm == \"nginx\"' uprobe:libc:nanosleep",
    "usdtkit count -f 'str(arg1) == \"reader\" && arg0 != 2' -c 'demo_apps/build/hello_usdt 4 reader' "
    "usdt::hello:greet",
    "usdtkit count -i 0.2 --top 3 --by arg1 -c 'demo_apps/build/hello_usdt 20' usdt::hello:tick",
    "usdtkit count -F --by pid -c \"sh -c 'demo_apps/build/hello_usdt 2; demo_apps/build/hello_usdt 3'\" "
    "usdt:demo_apps/build/hello_usdt:hello:tick",
    "usdtkit count --max-probes 100 -c 'demo_apps/build/hello_usdt 3' 'uprobe:libc:str*' 'uprobe:libc:mall*'",
)
HIST_EXAMPLES = epilog(
    "usdtkit hist -v arg1 -c 'demo_apps/build/hello_usdt 20' usdt::hello:tick",
    "usdtkit hist -v retval -c 'demo_apps/build/hello_usdt 3' uretprobe:libc:nanosleep",
    "usdtkit hist -p PID -d 1 -v arg4 --by 'str(arg2)' usdt::demo_httpd:request__done",
    "usdtkit hist -p PID -d 1 -v arg3 --linear 0,2000,250 --by arg1 usdt::demo_httpd:request__done",
    "usdtkit hist -i 0.2 --cumulative -v arg1 -c 'demo_apps/build/hello_usdt 20' usdt::hello:tick",
)
LATENCY_EXAMPLES = epilog(
    "usdtkit latency -c 'demo_apps/build/hello_usdt 5' uprobe:libc:nanosleep",
    "usdtkit latency --by 'str(arg0)' -c 'demo_apps/build/hello_usdt 3' uprobe:libc:printf",
    "usdtkit latency --key arg0 -c 'demo_apps/build/hello_usdt 5' usdt::hello:greet usdt::hello:tick",
    "usdtkit latency -p PID --key arg0 --by 'str(arg2)' usdt::demo_httpd:request__start "
    "usdt::demo_httpd:request__done",
    "usdtkit latency -p PID -k arg0 --by 'start.str(arg3),arg1' usdt::demo_httpd:request__start "
    "usdt::demo_httpd:request__done",
    "usdtkit latency -p PID -k arg0,arg1 usdt::demo_httpd:conn__accept usdt::demo_httpd:request__start",
    "usdtkit latency -p PID -k 'arg0&tid' usdt::demo_httpd:request__start usdt::demo_httpd:request__done",
    "usdtkit latency -c 'demo_apps/build/hello_usdt 3' 'uprobe:libc:*nanosleep'",
)


def _subcommand(subparsers: "argparse._SubParsersAction", name: str, examples: str,
                **kwargs: Any) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, epilog=examples, formatter_class=HelpFormatter, **kwargs)


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    trace = _subcommand(subparsers, "trace", TRACE_EXAMPLES, help="print every hit with its arguments",
                        description="Print one line per probe hit with its arguments.")
    _common(trace)
    trace.add_argument("-s", "--string", action="append", default=[], metavar="argN",
                       help="read this pointer argument as a NUL-terminated string (repeatable), e.g. 'arg1'")
    _string_size(trace, "string argument")
    trace.add_argument("-n", "--max-events", type=_positive(int), help="stop after this many events")
    trace.add_argument("--buffer-size", metavar="SIZE",
                       help="event buffer size, e.g. 256M (default 64M; rounded up to a power of two pages): "
                            "what a burst can fill while the reader catches up")
    trace.set_defaults(func=_runner("run_trace"))

    count = _subcommand(subparsers, "count", COUNT_EXAMPLES, help="count hits by probe and by fields, in the kernel",
                        description="Count hits in the kernel, keyed by probe and optional fields.")
    _common(count)
    count.add_argument("-b", "--by", default="", metavar="FIELDS",
                       help="comma-separated key fields among pid, tid, comm, cpu, cgroup, arg0..arg11, str(argN), "
                       "retval, ustack, e.g. 'comm,tid', 'str(arg1)', 'arg1'")
    count.add_argument("--top", type=_count, metavar="N",
                       help="show the N largest counts (default: 50 in text, all in JSON; 0: all); how many "
                       "more there are is said")
    _string_size(count, "str(argN) key")
    _interval(count)
    count.set_defaults(func=_runner("run_count"))

    hist = _subcommand(subparsers, "hist", HIST_EXAMPLES, help="histogram of an argument or return value",
                       description="A log2 (default) or linear histogram, built in the kernel.")
    _common(hist)
    hist.add_argument("-v", "--value", default="arg0",
                      help="the field: arg0..arg11 or retval (default arg0), e.g. 'arg1', 'retval'")
    hist.add_argument("--linear", metavar="LOW,HIGH,STEP", help="linear buckets instead of log2, e.g. '0,2000,250'")
    hist.add_argument("--by", metavar="FIELD[,FIELD]",
                      help="one histogram per value of FIELD (or per combination of several), e.g. 'str(arg2)', 'arg1'")
    _string_size(hist, "str(argN) key")
    _interval(hist)
    hist.set_defaults(func=_runner("run_hist"))

    latency = _subcommand(
        subparsers, "latency", LATENCY_EXAMPLES, help="latency of a function, or between two USDT probes",
        description="With one uprobe:BINARY:FUNCTION, time every call (entry to return, per thread, "
        "recursion-safe). With two USDT probes START DONE, time start to done, matched by thread or by "
        "--key.")
    _common(latency)
    latency.add_argument("-k", "--key", metavar="FIELDS[,FIELDS]",
                         help="match START and DONE on the same field of both (a request id: 'arg0'), or on "
                         "START_FIELD,DONE_FIELD ('arg0,arg1': arg0 of START equals arg1 of DONE); fields joined "
                         "by & must all match ('arg0&tid': an id unique per thread only); argN, pid, tid or cpu, at "
                         "most 4 per side; without -k, START and DONE pair on the same thread")
    latency.add_argument("--linear", metavar="LOW,HIGH,STEP", help="linear buckets (ns) instead of log2")
    latency.add_argument("--by", metavar="FIELD[,FIELD]",
                         help="one histogram per value of FIELD (or per combination of several) at DONE, e.g. "
                         "'str(arg2)', or at START as start.FIELD, kept with the start time, e.g. "
                         "'start.str(arg3),arg1'; for a function, argN and str(argN) are its arguments at entry "
                         "and retval its return value")
    _string_size(latency, "str(argN) key")
    _interval(latency)
    latency.set_defaults(func=_runner("run_latency"))


