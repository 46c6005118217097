"""What ``usdtkit trace``, ``count``, ``hist`` and ``latency`` do once parsed: attach, collect, print.

Kept apart from the parsers in :mod:`usdtkit.cli.cmd_trace` so that building the command line (and
``usdtkit list``) never imports the tracing stack.  Collecting is the run loop's job
(:mod:`usdtkit.tracing.runloop`); this module prints what it gathered, and every loss it counted.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from ..collect.deltas import counts_delta, histograms_delta, stats_delta
from ..views import event_text
from ..views.text import format_value, key_text, render_counts, terminal_width
from ..collect.results import Counts, Event, Histogram, ProbeStats
from ..errors import TargetError, UsageError
from ..expr.fields import Field
from ..plan.request import HistSpec
from ..tracing.api import trace
from ..tracing.late import LateSession
from ..tracing.runloop import RunLoop
from ..tracing.session import Session
from . import pictures


# --------------------------------------------------------------------------- running a session
def _hist_spec(text: Optional[str], fld: Field, by: Optional[str]) -> HistSpec:
    fields = tuple(Field.parse(part, sides=True) for part in by.split(",") if part.strip()) if by else ()
    by_field = (fields[0] if len(fields) == 1 else fields) if fields else None
    if not text:
        return HistSpec(fld, by=by_field)
    try:
        low, high, step = (int(x, 0) for x in text.split(","))
    except ValueError:
        raise UsageError(f"--linear {text!r}: expected LOW,HIGH,STEP integers") from None
    return HistSpec(fld, "linear", low, high, step, by=by_field)


def command_argv(text: str) -> List[str]:
    """The argv of ``-c COMMAND``, split as a shell would (without running one)."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"-c {text!r}: {exc}") from None
    if not argv:
        raise UsageError("-c needs a command")
    return argv


def _session(args: argparse.Namespace, on_event: Optional[Callable[[Event], None]] = None,
             **options: object) -> Session:
    """The session the command line describes; with ``-c`` it owns the command (gated until attached,
    its output on stderr so that stdout stays machine-readable, stopped when the session closes)."""
    if getattr(args, "cumulative", False) and not getattr(args, "interval", None):
        raise UsageError("--cumulative applies to what -i INTERVAL prints: give -i as well")
    if args.command is not None:
        options.setdefault("command_stdout", sys.stderr.fileno())
        options.update(command=command_argv(args.command))
    else:
        options["pid"] = args.pid
    if args.follow:
        if args.pid is None and args.command is None:
            raise UsageError("-F/--follow traces the descendants of -p PID or of -c CMD: give one of them")
        options["follow"] = True
    if getattr(args, "string_size", None) is not None:
        options["string_size"] = args.string_size
    if getattr(args, "cgroup", None):
        options["cgroup"] = args.cgroup
    if getattr(args, "max_probes", None) is not None:
        options["max_probes"] = args.max_probes
    if getattr(args, "buffer_size", None) is not None:
        options["buffer_size"] = args.buffer_size
    return trace(*args.probes, on_event=on_event, filters=args.filter, unsafe=args.unsafe, **options)


class _Totals:
    """The last readings, to print what changed in each interval."""

    def __init__(self) -> None:
        self.counts: Optional[Counts] = None
        self.hists: Dict[object, Histogram] = {}
        self.stats: Dict[str, ProbeStats] = {}


def _collect(session: Session, args: argparse.Namespace, on_tick: Optional[Callable[[], None]] = None,
             also: Sequence[Session] = ()) -> str:
    """Attach, collect until the end condition, detach.  Returns why it stopped, in words.  Sessions
    ``also`` given attach first and detach last: they read their maps when the trace ends.

    SIGTERM is a flag from before attaching until the summary is printed, so a trace terminated while
    it compiles or attaches still detaches cleanly and says what it collected."""
    for warning in [w for s in (*also, session) for w in s.warnings]:
        print(f"warning: {warning}", file=sys.stderr)
    said = [len(s.warnings) for s in (*also, session)]
    terminated: List[int] = []

    def on_term(signum: int, frame: object) -> None:
        terminated.append(signum)
        session.stop()

    # Not restored: the command ends once its summary is printed, and a SIGTERM until then only
    # shortens the trace.
    signal.signal(signal.SIGTERM, on_term)
    loop = RunLoop(session, duration=args.duration, interval=getattr(args, "interval", None), on_tick=on_tick)
    waiting = ""
    if isinstance(session, LateSession):  # attached as the command declares them, said as it happens
        session.on_notice = lambda text: print(text, file=sys.stderr, flush=True)
        waiting = f"Waiting for the command to declare {', '.join(map(str, session.waiting))}. "
    try:
        for other in also:
            other.attach()
        session.attach()  # releases the -c command once every probe is in place
        everything = (*also, session)
        what = (f"{sum(len(s.attachments) for s in everything)} site(s) of "
                f"{sum(len(s.labels) for s in everything)} probe(s)")
        seconds = sum(s.attach_seconds for s in everything)
        attached = f"Attached {what} in {seconds:.2f}s. " if session.labels else ""
        print(f"{attached}{waiting}Ctrl-C to stop.", file=sys.stderr, flush=True)
        reason = loop.run()
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        session.close()  # detaches, and stops a -c command
        for other in also:
            other.close()
        for done, known in zip((*also, session), said):  # what went wrong while reading the results
            for warning in done.warnings[known:]:
                print(f"warning: {warning}", file=sys.stderr)
    if terminated:
        reason = "terminated"
    return {"duration": "done", "detached": "done", "until": "done"}.get(reason, reason)


def _check_declared(session: Session) -> int:
    """0, or a one-line error naming the probes the command never declared (after its results)."""
    missing = session.undeclared() if isinstance(session, LateSession) else None
    if missing:
        raise TargetError(missing)
    return 0


def _loss_lines(session: Session, stats: Dict[str, ProbeStats]) -> List[str]:
    lines = [f"{label}: " + ", ".join(s.losses()) for label, s in stats.items() if s.losses()]
    if session.dropped_by_user_queue:
        lines.append(f"{session.dropped_by_user_queue} events dropped from the in-memory queue")
    if session.children_not_followed():
        lines.append(f"{session.children_not_followed()} child processes were not followed (the map of followed "
                     "processes was full)")
    left = session.undelivered() if not session.attached else 0
    if left:
        lines.append(f"{left} events were still in the buffer when the trace ended (not shown)")
    return lines


def _report_losses(session: Session, stats: Optional[Dict[str, ProbeStats]] = None) -> dict:
    """Warn on stderr about every loss; return the stats as JSON."""
    stats = session.stats() if stats is None else stats
    for line in _loss_lines(session, stats):
        print(f"warning: {line}", file=sys.stderr)
    return {label: s.to_json() for label, s in stats.items()}


def _no_hits_hint(session: Session, args: argparse.Namespace) -> None:
    """A process that did its work in children (a server's workers) shows no hits: say why (unless a
    filter may be the reason)."""
    if args.follow or getattr(args, "filter", None) or any(s.hits for s in session.stats().values()):
        return
    if args.command is not None:
        print("note: no hits in the command itself; if it starts other programs (as a shell does), add -F to trace "
              "them too", file=sys.stderr)
        return
    if args.pid is None:
        return
    from ..tracing.children import child_pids

    children = child_pids(args.pid)
    if children:
        print(f"note: no hits in pid {args.pid}; it has {len(children)} child process(es) (e.g. "
              f"{', '.join(map(str, children[:3]))}), which are not traced: add -F to follow them", file=sys.stderr)


# --------------------------------------------------------------------------- commands
def run_trace(args: argparse.Namespace) -> int:
    printed = [0]
    interactive = sys.stdout.isatty()
    if args.json and args.csv:
        raise UsageError("--json and --csv: choose one")
    clock = event_text.Clock(args.timestamps or "wall")
    table: List[event_text.EventCsv] = []

    def show(event: Event) -> None:
        if args.max_events and printed[0] >= args.max_events:
            session.stop()
            return
        printed[0] += 1
        if args.json:
            sys.stdout.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
        elif table:
            table[0].write(event)
        else:
            sys.stdout.write(event_text.event_line(event, clock) + "\n")
        if interactive:
            sys.stdout.flush()
        if args.max_events and printed[0] >= args.max_events:
            session.stop()

    session = _session(args, on_event=show, events=True, strings=args.string, keep_events=0)
    if args.csv:  # probes declared after the start have unknown arguments yet: room for the most (12)
        plan = session.plan
        table.append(event_text.EventCsv(sys.stdout, clock, 12 if plan is None else
                                         max((p.arg_count for p in plan.probes), default=0)))
    if args.json and (sys.stdout.encoding or "").lower().replace("-", "") == "utf8":
        sys.stdout.flush()
        with contextlib.suppress(OSError, ValueError):  # no fd (a stream in memory): written per event
            session.write_json(sys.stdout.fileno(), args.max_events)  # in C where records are read there
    reason = _collect(session, args)
    if session.native and args.json:
        printed[0] = session.delivered
    sys.stdout.flush()
    _report_losses(session)  # warnings go to stderr, also with --json (stdout holds events only)
    _no_hits_hint(session, args)
    if args.max_events and printed[0] >= args.max_events:
        reason = f"stopped after {args.max_events} events"
    if not args.json:
        print(f"{printed[0]} events ({reason})", file=sys.stderr)
    return _check_declared(session)


def _interval_view(session: Session, args: argparse.Namespace, totals: _Totals):
    """Counts, histograms and stats to print now: per interval (the change since the last print), or
    cumulative with --cumulative and at the end of a trace without -i."""
    counts, hists, stats = session.counts(), session.histograms(), session.stats()
    per_interval = getattr(args, "interval", None) and not getattr(args, "cumulative", False)
    shown = (counts, hists, stats)
    if per_interval:
        shown = (counts_delta(counts, totals.counts), histograms_delta(hists, totals.hists),
                 stats_delta(stats, totals.stats))
    totals.counts, totals.hists, totals.stats = counts, hists, stats
    return shown


def run_count(args: argparse.Namespace) -> int:
    fields = [f for f in args.by.split(",") if f.strip()] if args.by else []
    if args.json and args.csv:
        raise UsageError("--json and --csv: choose one")
    if args.csv and args.interval:
        raise UsageError("--csv writes one table of the whole trace: leave out -i")
    pictures.check(args, fields)
    session = _session(args, events=False, count_by=fields)
    totals = _Totals()

    top = args.top if args.top is not None else (0 if args.json or args.csv else 50)

    def show() -> None:
        counts, _, stats = _interval_view(session, args, totals)
        omitted = len(counts) - top if counts is not None and top and len(counts) > top else 0
        if args.csv:
            sys.stdout.write(event_text.counts_csv(counts, top or None))
            _report_losses(session, stats)
        elif args.json:
            doc = {"counts": counts.to_json() if counts is not None else None, "stats": _report_losses(session, stats)}
            if omitted:
                doc["counts"]["counts"] = doc["counts"]["counts"][:top]  # type: ignore[index]
                doc["counts"]["omitted"] = omitted  # type: ignore[index]
            sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
        else:
            if args.interval:
                print(time.strftime("%H:%M:%S"))
            print(render_counts(counts, top or None, terminal_width(sys.stdout)) if counts is not None
                  else "(no counts)")
            if omitted:
                print(f"... and {omitted} more rows ({len(counts)} in all; --top 0 shows every row)")
            _report_losses(session, stats)
        sys.stdout.flush()

    reason = _collect(session, args, on_tick=show)
    show()
    _no_hits_hint(session, args)
    if not args.json:
        print(f"({reason})", file=sys.stderr)
    pictures.write(args, totals.counts, "usdtkit count " + " ".join(args.probes))
    return _check_declared(session)


def _print_hists(session: Session, args: argparse.Namespace, title: str, totals: _Totals) -> None:
    _, hists, stats = _interval_view(session, args, totals)
    if args.json:
        doc = {"histograms": [{"probe": label[0], "by": label[1] if len(label) == 2 else list(label[1:]),
                               **h.to_json()} if isinstance(label, tuple)
                              else {"probe": label, **h.to_json()} for label, h in hists.items()],
               "stats": _report_losses(session, stats)}
        sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
    else:
        if args.interval:
            print(time.strftime("%H:%M:%S"))
        if not hists:
            print("(no values)")
        for label, hist in sorted(hists.items(), key=lambda kv: str(kv[0])):
            unit = f" ({hist.unit})" if hist.unit else ""
            if isinstance(label, tuple):
                names = [part.strip() for part in args.by.split(",") if part.strip()]
                label = f"{label[0]} [" + ", ".join(f"{n}={key_text(v)}" for n, v in zip(names, label[1:])) + "]"
            p50, p99 = (format_value(hist.percentile(p), hist.unit) for p in (50, 99))
            print(f"{label} {title}{unit}: {hist.total} values, p50 <= {p50}, p99 <= {p99}")
            print(hist.render())
        _report_losses(session, stats)
    sys.stdout.flush()


def run_hist(args: argparse.Namespace) -> int:
    fld = Field.parse(args.value)
    if fld.name not in ("arg", "retval"):
        raise UsageError(f"--value {args.value}: histograms take arg0..arg11 or retval")
    session = _session(args, events=False, hist=_hist_spec(args.linear, fld, args.by))
    totals = _Totals()
    reason = _collect(session, args, on_tick=lambda: _print_hists(session, args, str(fld), totals))
    _print_hists(session, args, str(fld), totals)
    _no_hits_hint(session, args)
    if not args.json:
        print(f"({reason})", file=sys.stderr)
    return _check_declared(session)


def run_latency(args: argparse.Namespace) -> int:
    keys = None
    if args.key:
        parts = [p.strip() for p in args.key.split(",")]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2:
            raise UsageError("--key takes FIELDS (both probes) or START_FIELDS,DONE_FIELDS, e.g. 'arg0', "
                             "'arg0,arg1', 'arg0&tid'")
        keys = parts
    session = _session(args, events=False, latency=True, pair_keys=keys,
                       hist=_hist_spec(args.linear, Field("latency"), args.by))
    totals = _Totals()
    reason = _collect(session, args, on_tick=lambda: _print_hists(session, args, "latency", totals))
    _print_hists(session, args, "latency", totals)
    _no_hits_hint(session, args)
    if not args.json:
        print(f"({reason})", file=sys.stderr)
    return _check_declared(session)
