"""What ``usdtkit top`` does once parsed: count hits by probe, pid and command name (and time a latency
with ``-l``), then show the table of :mod:`usdtkit.views.top_table` every interval: on the terminal's
alternate screen through curses, else as text or JSON lines."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

from ..collect.deltas import histograms_delta
from ..collect.results import Counts, Histogram
from ..errors import UsageError
from ..expr.fields import Field
from ..plan.request import HistSpec
from ..tracing.api import trace_beside
from ..tracing.runloop import RunLoop
from ..tracing.session import Session
from ..views import top_table
from .trace_run import _session

_KEYS_QUIT = (ord("q"), ord("Q"))


def _latency_session(args: argparse.Namespace, counting: Session) -> Optional[Session]:
    """The session timing ``-l`` (one function, or START and DONE) in the process ``counting`` traces."""
    if not args.latency:
        return None
    return trace_beside(counting, args.latency, args.pid, args.cgroup, args.follow, filters=args.filter,
                        events=False, latency=True, hist=HistSpec(Field("latency"), by=Field("pid")),
                        unsafe=args.unsafe, max_probes=args.max_probes)


class _Screen:
    """The readings between two refreshes, and the table they make."""

    def __init__(self, counting: Session, timing: Optional[Session], interval: float) -> None:
        self.counting = counting
        self.timing = timing
        self.before: Optional[Counts] = None
        self.hists_before: Dict[object, Histogram] = {}
        self.taken = time.monotonic()
        self.interval = interval
        # A latency is kept under the probe where it ends: a DONE probe's goes on its START probe's row.
        self._row_probe: Dict[str, str] = {}
        pair = timing.plan.pair if timing is not None and timing.plan is not None else None
        if pair is not None:
            self._row_probe[timing.labels[pair.done]] = timing.labels[pair.start]  # type: ignore[union-attr]

    def table(self) -> List[top_table.TopRow]:
        now = self.counting.counts()
        hists = self.timing.histograms() if self.timing is not None else {}
        taken = time.monotonic()
        last = histograms_delta(hists, self.hists_before)
        latencies = {(self._row_probe.get(str(label[0]), str(label[0])), label[1]): h
                     for label, h in last.items() if isinstance(label, tuple)}
        rows = top_table.rows(now, self.before, taken - self.taken, latencies)
        self.before, self.hists_before, self.taken = now, hists, taken
        return rows

    def title(self, width: int) -> str:
        plan = self.counting.plan  # None until a command declares its probes
        pid = plan.pid if plan is not None else getattr(getattr(self.counting, "command", None), "pid", None)
        where = f"pid {pid}" if pid is not None else "all processes"
        return (f"usdtkit top - {where} - {len(self.counting.labels)} probe(s) - every {self.interval:g} s - "
                f"{time.strftime('%H:%M:%S')} - q quits")[:width]


def _probes(args: argparse.Namespace) -> List[str]:
    if len(args.latency) > 2:
        raise UsageError("-l/--latency takes one function, or a START and a DONE probe (given twice)")
    probes = list(args.probes)
    if not probes:
        if args.pid is None and args.command is None:
            raise UsageError("give PROBE... or a process (-p PID or -c CMD: then every USDT probe of its executable)")
        probes = ["usdt::*:*"]
    if args.latency and args.latency[0] not in probes:
        probes.append(args.latency[0])  # the function or START is counted: its rate goes with its latency
    return probes


def _live_wanted(args: argparse.Namespace) -> bool:
    return (not args.json and sys.stdout.isatty() and sys.stdin.isatty()
            and os.environ.get("TERM", "dumb") not in ("", "dumb"))


def run_top(args: argparse.Namespace) -> int:
    counted = argparse.Namespace(**{**vars(args), "probes": _probes(args)})
    live = _live_wanted(args)
    # On the live screen a -c command's output would scribble over the table: it goes nowhere.
    quiet = {"command_stdout": subprocess.DEVNULL} if live and args.command is not None else {}
    counting = _session(counted, events=False, count_by=["pid", "comm"], **quiet)
    timing = None
    terminated: List[int] = []

    def on_term(signum: int, frame: object) -> None:  # a flag: the screen is restored on the way out
        terminated.append(signum)
        counting.stop()

    signal.signal(signal.SIGTERM, on_term)
    try:
        timing = _latency_session(args, counting)
        if timing is not None:
            timing.attach()  # first: attaching the counting session releases a -c command
        counting.attach()
        waiting = getattr(counting, "waiting", ())  # probes a -c command declares as it runs
        print(f"Attached {len(counting.attachments) + (len(timing.attachments) if timing else 0)} site(s) of "
              f"{len(counting.labels)} probe(s)."
              + (f" Waiting for the command to declare {', '.join(map(str, waiting))}." if waiting else ""),
              file=sys.stderr, flush=True)
        screen = _Screen(counting, timing, args.interval)
        reason = _live(screen, args) if live else _printed(screen, args)
        if terminated:
            reason = "terminated"
    finally:
        counting.close()
        if timing is not None:
            timing.close()
    for session in (counting, timing):
        for warning in (session.warnings if session is not None else ()):
            print(f"warning: {warning}", file=sys.stderr)
    print(f"({reason})", file=sys.stderr)
    return 0


def _printed(screen: _Screen, args: argparse.Namespace) -> str:
    """Without a terminal: the table (or one JSON document) every interval and at the end, which comes
    with -d, Ctrl-C or the target's exit."""
    timed = bool(args.latency)

    def show() -> None:
        rows = screen.table()
        if args.json:
            doc = {"time": time.time(), "rows": [r.to_json() for r in rows]}
            sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
        else:
            width = int(os.environ.get("COLUMNS", "0") or 0) or 120
            print("\n".join(top_table.render(rows, width, timed=timed, title=screen.title(width))))
            print()
        sys.stdout.flush()

    loop = RunLoop(screen.counting, duration=args.duration, interval=args.interval, on_tick=show)
    reason = loop.run()
    show()  # the last (partial) interval: a short run still prints its table
    return reason


def _live(screen: _Screen, args: argparse.Namespace) -> str:
    """On the terminal: curses draws the table on the alternate screen, sized to the window, redrawn
    every interval and when the window changes size; ``q`` quits, Ctrl-C too."""
    import curses

    timed = bool(args.latency)
    quit_asked: List[bool] = []
    state: Dict[str, object] = {"rows": []}

    def run(window: "curses.window") -> str:
        with contextlib.suppress(curses.error):  # a terminal that cannot hide its cursor keeps it
            curses.curs_set(0)
        window.nodelay(True)

        def draw() -> None:
            height, width = window.getmaxyx()
            lines = top_table.render(state["rows"], width - 1, height, timed=timed,  # type: ignore[arg-type]
                                     title=screen.title(width - 1))
            window.erase()
            for y, line in enumerate(lines[:height]):
                window.addnstr(y, 0, line, width - 1, curses.A_BOLD if y == 1 else curses.A_NORMAL)
            window.refresh()

        def tick() -> None:
            state["rows"] = screen.table()
            draw()

        def keys() -> bool:
            while True:
                key = window.getch()
                if key == -1:
                    return bool(quit_asked)
                if key in _KEYS_QUIT:
                    quit_asked.append(True)
                elif key == curses.KEY_RESIZE:
                    draw()

        draw()
        loop = RunLoop(screen.counting, duration=args.duration, interval=args.interval, on_tick=tick, until=keys)
        return loop.run()

    # curses takes LINES and COLUMNS from the environment over the window's size, also after a resize:
    # this process follows the window (its children, the -c command, already have their environment).
    for name in ("LINES", "COLUMNS"):
        os.environ.pop(name, None)
    try:
        curses.setupterm()
    except curses.error:  # no terminfo entry for this TERM: the table as text instead
        return _printed(screen, args)
    reason = curses.wrapper(run)
    return "quit" if quit_asked else reason
