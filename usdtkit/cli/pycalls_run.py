"""What ``usdtkit pycalls`` does once parsed: find the calls' source, collect, print a table or JSON.

Text: which source was used, then one row per function, costliest first: calls, total and self time,
the mean call, and the upper bounds of the log2 buckets holding the 50th and 99th percentile call
(``p99<=  16.8 ms``: 99% of calls took less than that); then garbage collections where the
interpreter has their probes.  JSON: ``{"source", "functions": [{"function", "file", "line",
"calls", "total_ns", "self_ns", "p50_ns", "p99_ns"}...], "gc", "stats"}``; from CPython's own probe,
without the times and with the line a function returned from (``return_line``) instead of its first.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from ..collect.calls import FunctionCalls, GcPauses, top
from ..views.text import format_value, key_text, render_table, terminal_width
from ..tracing.pycalls import PyCalls
from . import pictures
from .trace_run import _collect, _report_losses, command_argv

DEFAULT_TOP = 20


def _time(ns: Optional[int]) -> str:
    return format_value(ns, "ns") if ns is not None else "?"


def _cells(row: FunctionCalls, by_thread: bool) -> List[str]:
    cells = [key_text(row.function), f"{key_text(row.file)}:{key_text(row.line)}"]
    if by_thread:
        cells.append(key_text(row.tid))
    cells.append(str(row.calls))
    if row.timed:
        mean = (row.total_ns or 0) // row.calls if row.calls else 0
        cells += [_time(row.total_ns), _time(row.self_ns), _time(mean), _time(row.p50_ns), _time(row.p99_ns)]
    return cells


def render_calls(rows: List[FunctionCalls], by_thread: bool, timed: bool) -> str:
    """The table of function rows (``(no calls)`` when empty)."""
    if not rows:
        return "(no calls)"
    where = "file:return_line" if rows[0].at_return else "file:line"
    header = ["function", where, *(["tid"] if by_thread else []), "calls"]
    if timed:
        header += ["total", "self", "mean", "p50<=", "p99<="]
    return render_table(header, [_cells(row, by_thread) for row in rows], terminal_width(sys.stdout))


def _gc_line(gc: GcPauses) -> str:
    return (f"gc: {gc.collections} collection(s), {_time(gc.total_ns)} in all "
            "(python:gc__start to gc__done)")


def run_pycalls(args: argparse.Namespace) -> int:
    command = command_argv(args.command) if args.command is not None else None
    profile = PyCalls(pid=args.pid, command=command, by_thread=args.by_thread, string_size=args.string_size,
                      command_stdout=sys.stderr.fileno() if command else None, gc=not args.no_gc,
                      source=args.source, paths=bool(pictures.wanted(args)))
    reason = _collect(profile.session, args, also=[s for s in profile.sessions if s is not profile.session])
    rows = profile.functions()
    limit = args.top if args.top is not None else (0 if args.json else DEFAULT_TOP)
    shown, omitted = top(rows, limit)
    gc = profile.gc()
    if args.json:
        doc = {"source": profile.source.name, "functions": [row.to_json() for row in shown]}
        if omitted:
            doc["omitted"] = omitted
        doc.update(gc=gc.to_json() if gc is not None else None, stats=_report_losses(profile.session))
        sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
    else:
        print(f"source: {profile.source.described}")
        print(render_calls(shown, args.by_thread, profile.source.timed))
        if omitted:
            print(f"... and {omitted} more functions ({len(rows)} in all; --top 0 shows every row)")
        if gc is not None:
            print(_gc_line(gc))
        _report_losses(profile.session)
    sys.stdout.flush()
    if profile.paths is not None:
        pictures.write_stacks(args, profile.paths.stacks(), "usdtkit pycalls", unit="ns")
    untimed = profile.untimed_reason()
    if untimed:
        print(f"note: {untimed}", file=sys.stderr)
    if not args.json:
        print(f"({reason})", file=sys.stderr)
    return 0
