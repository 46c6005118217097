"""What ``usdtkit trace``, ``count``, ``hist`` and ``latency`` do once parsed: attach, collect, print.

Kept apart from the parsers in :mod:`usdtkit.cli.cmd_trace` so that building the command line (and
``usdtkit list``) never imports the tracing stack.
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from typing import Callable, Optional

from ..collect.render import format_value, printable, render_counts
from ..collect.results import Event
from ..errors import UsageError
from ..tracing.api import trace
from ..tracing.session import Session
from ..tracing.spec import Field, HistSpec


# --------------------------------------------------------------------------- running a session
def _hist_spec(text: Optional[str], fld: Field, by: Optional[str]) -> HistSpec:
    by_field = Field.parse(by) if by else None
    if not text:
        return HistSpec(fld, by=by_field)
    try:
        low, high, step = (int(x, 0) for x in text.split(","))
    except ValueError:
        raise UsageError(f"--linear {text!r}: expected LOW,HIGH,STEP integers") from None
    return HistSpec(fld, "linear", low, high, step, by=by_field)


def _session(args: argparse.Namespace, on_event: Optional[Callable[[Event], None]] = None,
             **options: object) -> Session:
    """The session the command line describes; with ``-c`` it owns the command (gated until attached,
    its output on stderr so that stdout stays machine-readable, stopped when the session closes)."""
    if args.command is not None:
        try:
            argv = shlex.split(args.command)
        except ValueError as exc:
            raise UsageError(f"-c {args.command!r}: {exc}") from None
        if not argv:
            raise UsageError("-c needs a command")
        options.update(command=argv, command_stdout=sys.stderr.fileno())
    else:
        options["pid"] = args.pid
    return trace(*args.probes, on_event=on_event, filters=args.filter, unsafe=args.unsafe, **options)


def _collect(session: Session, args: argparse.Namespace,
             on_tick: Optional[Callable[[], None]] = None, until: Optional[Callable[[], bool]] = None) -> str:
    """Attach, collect until the end condition, detach. Returns why it stopped."""

    terminated = []

    def on_term(signum: int, frame: object) -> None:
        # Only a flag: raising here would land inside bcc's ctypes callback and be swallowed.
        terminated.append(signum)
        session.stop()

    previous = signal.signal(signal.SIGTERM, on_term)
    reason = "done"
    for warning in session.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        session.attach()  # releases the -c command once every probe is in place
        what = f"{len(session.attachments)} site(s) of {len(session.spec.probes)} probe(s)"
        print(f"Attached {what} in {session.attach_seconds:.2f}s. Ctrl-C to stop.", file=sys.stderr, flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        interval = getattr(args, "interval", None)
        next_tick = time.monotonic() + interval if interval else None
        while True:
            now = time.monotonic()
            stop_at = min(t for t in (deadline, next_tick, now + 0.2) if t is not None)
            session.run(duration=max(stop_at - now, 0.0), until=until)
            if session.target_exited:
                reason = "target exited"
                break
            if terminated:
                reason = "terminated"
                break
            if session.stopped or (until is not None and until()):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if next_tick is not None and time.monotonic() >= next_tick and on_tick:
                on_tick()
                next_tick += interval
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        signal.signal(signal.SIGTERM, previous)
        session.close()  # detaches, and stops a -c command
    return reason


def _report_losses(session: Session, as_json: bool) -> dict:
    stats = {label: s.to_json() for label, s in session.stats().items()}
    if not as_json:
        for label, s in session.stats().items():
            problems = [f"{n} {what}" for n, what in ((s.lost_events, "events lost (ring buffer full)"),
                                                    (s.lost_keys, "keys lost (map full)"),
                                                    (s.read_errors, "argument reads failed")) if n]
            if problems:
                print(f"warning: {label}: " + ", ".join(problems), file=sys.stderr)
        if session.dropped_by_user_queue:
            print(f"warning: {session.dropped_by_user_queue} events dropped from the in-memory queue",
                  file=sys.stderr)
    return stats


# --------------------------------------------------------------------------- commands
def _format_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # quoted, control characters escaped
    return "?" if value is None else str(value)


def run_trace(args: argparse.Namespace) -> int:
    printed = [0]
    interactive = sys.stdout.isatty()

    def show(event: Event) -> None:
        if args.max_events and printed[0] >= args.max_events:
            session.stop()
            return
        printed[0] += 1
        if args.json:
            sys.stdout.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
        else:
            values = " ".join(_format_value(v) for v in event.args)
            extra = f" ret={event.retval}" if event.retval is not None else ""
            sys.stdout.write(f"{event.timestamp_ns / 1e9:.6f} {event.pid:>7} {event.tid:>7} "
                             f"{printable(event.comm):<15} {event.probe} {values}{extra}\n")
        if interactive:
            sys.stdout.flush()

    session = _session(args, on_event=show, events=True, strings=args.string,
                                string_size=args.string_size, keep_events=0)
    reason = _collect(session, args)
    sys.stdout.flush()
    _report_losses(session, False)  # warnings go to stderr, also with --json (stdout holds events only)
    if args.max_events and printed[0] >= args.max_events:
        reason = f"stopped after {args.max_events} events"
    if not args.json:
        print(f"{printed[0]} events ({reason})", file=sys.stderr)
    return 0


def run_count(args: argparse.Namespace) -> int:
    fields = [f for f in args.by.split(",") if f.strip()] if args.by else []
    session = _session(args, events=False, count_by=fields)

    def show(tick: bool = False) -> None:
        counts = session.counts()
        if args.json:
            doc = {"counts": counts.to_json() if counts else None, "stats": _report_losses(session, True)}
            sys.stdout.write(json.dumps(doc) + "\n")
        else:
            if tick:
                print(time.strftime("%H:%M:%S"))
            print(render_counts(counts) if counts is not None else "(no counts)")
            _report_losses(session, False)
        sys.stdout.flush()

    reason = _collect(session, args, on_tick=lambda: show(tick=True))
    show()
    if not args.json:
        print(f"({reason})", file=sys.stderr)
    return 0


def _print_hists(session: Session, args: argparse.Namespace, title: str) -> None:
    hists = session.histograms()
    if args.json:
        doc = {"histograms": [{"probe": label[0], "by": label[1], **h.to_json()} if isinstance(label, tuple)
                              else {"probe": label, **h.to_json()} for label, h in hists.items()],
               "stats": _report_losses(session, True)}
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        if not hists:
            print("(no values)")
        for label, hist in sorted(hists.items(), key=lambda kv: str(kv[0])):
            unit = f" ({hist.unit})" if hist.unit else ""
            if isinstance(label, tuple):
                label = f"{label[0]} [{args.by}={label[1]}]"
            p50, p99 = (format_value(hist.percentile(p), hist.unit) for p in (50, 99))
            print(f"{label} {title}{unit}: {hist.total} values, p50 <= {p50}, p99 <= {p99}")
            print(hist.render())
        _report_losses(session, False)
    sys.stdout.flush()


def run_hist(args: argparse.Namespace) -> int:
    fld = Field.parse(args.value)
    if fld.name not in ("arg", "retval"):
        raise UsageError(f"--value {args.value}: histograms take arg0..arg11 or retval")
    session = _session(args, events=False, hist=_hist_spec(args.linear, fld, args.by))
    reason = _collect(session, args, on_tick=lambda: _print_hists(session, args, str(fld)))
    _print_hists(session, args, str(fld))
    if not args.json:
        print(f"({reason})", file=sys.stderr)
    return 0


def run_latency(args: argparse.Namespace) -> int:
    keys = None
    if args.key:
        parts = [p.strip() for p in args.key.split(",")]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2:
            raise UsageError("--key takes START or START,DONE")
        keys = parts
    session = _session(args, events=False, latency=True, pair_keys=keys,
                                hist=_hist_spec(args.linear, Field("latency"), args.by))
    reason = _collect(session, args, on_tick=lambda: _print_hists(session, args, "latency"))
    _print_hists(session, args, "latency")
    if not args.json:
        print(f"({reason})", file=sys.stderr)
    return 0
