"""Calls per function of a Python process, timed where the process times them: ``usdtkit pycalls``.

Where the calls are read from, in this order:

* **usdtkit.instrument's probes.**  A program run under ``python -m usdtkit.instrument`` (or that calls
  ``usdtkit.instrument.enable()``, or that sees ``USDTKIT_INSTRUMENT=1``) declares one runtime provider,
  ``pycalls``, whose ``function__return(function, file, line, depth, total_ns, self_ns)`` fires as each
  call of the program's own code returns, with the call's wall time and the part of it spent outside
  instrumented callees, both measured in the process.  One BPF program keeps, per function, a log2
  histogram of ``total_ns`` with the sum of ``total_ns`` and of ``self_ns`` beside it
  (``HistSpec(sum=True, sums=...)``): calls, total, self, p50 and p99 from one map, and nothing sent
  to user space per call.
* **CPython's own probes.**  An interpreter built with ``--with-dtrace`` (Debian's ``python3.11``) fires
  ``python:function__return(file, function, line)`` at every return: the kernel counts returns per
  function and line returned from (the probe gives no first line).  It gives no times: only a probe at entry could start a clock, and 3.11's
  ``python:function__entry`` fires only for frames entered from C, missing nearly every call.

When neither is there, :class:`PyCalls` says how to instrument the program.  Where the interpreter
has ``python:gc__start`` and ``gc__done``, a second program times its garbage collections (start to
done on one thread): how many, and how long in all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..collect.call_paths import CallPaths
from ..collect.calls import FunctionCalls, GcPauses, counted_rows, timed_rows
from ..elf.known_issues import known_issues
from ..errors import ProbeNotFound, UsageError
from ..expr.fields import Field
from ..plan.request import HistSpec
from .api import trace, trace_beside
from .session import Session


@dataclass(frozen=True)
class CallSource:
    """A probe that fires at every return of a Python function, and what it carries."""

    name: str
    probe: str
    timed: bool  # whether it carries the call's total and self times
    function: Field  # the argument holding the function's name
    file: Field  # its file
    line: Field  # its first line (pycalls), or the line it returns from (python)
    described: str


PYCALLS = CallSource("pycalls", "usdt::pycalls:function__return", True, Field("str", 0), Field("str", 1),
                     Field("arg", 2), "pycalls:function__return of usdtkit.instrument (times measured in the process)")
PYTHON = CallSource("python", "usdt::python:function__return", False, Field("str", 1), Field("str", 0),
                    Field("arg", 2), "python:function__return of CPython itself (calls only)")
TOTAL_NS, SELF_NS = Field("arg", 4), Field("arg", 5)  # of pycalls:function__return
GC_PROBES = ("usdt::python:gc__start", "usdt::python:gc__done")
ENTRY = "usdt::pycalls:function__entry"
INSTRUMENT_HINT = ("run it under usdtkit's instrumentation: `python -m usdtkit.instrument script.py`, or "
                   "usdtkit.instrument.enable() in the program, or USDTKIT_INSTRUMENT=1 in its environment")
PATHS_NEED = ("call paths need usdtkit.instrument's pycalls probes (CPython's own function__entry misses most "
              "calls); " + INSTRUMENT_HINT)


def _options(source: CallSource, by_thread: bool) -> dict:
    """What the kernel keeps per function: a timed histogram, or a count."""
    keys: Tuple[Field, ...] = (source.function, source.file, source.line) + ((Field("tid"),) if by_thread else ())
    if source.timed:
        return {"hist": HistSpec(TOTAL_NS, by=keys, sum=True, sums=(SELF_NS,))}
    return {"count_by": list(keys)}


def instrumented(command: Sequence[str]) -> bool:
    """Whether a command runs its program under usdtkit.instrument (``python -m usdtkit.instrument ...``,
    or ``USDTKIT_INSTRUMENT=1`` in this environment, which the command inherits)."""
    words = list(command)
    by_module = any(a == "-m" and b == "usdtkit.instrument" for a, b in zip(words, words[1:]))
    return by_module or os.environ.get("USDTKIT_INSTRUMENT") == "1"


class PyCalls:
    """Calls per function of process ``pid``, or of ``command`` (an argv started gated, traced from its
    first instruction); use it as a context manager to attach and detach (the garbage collector's
    session first: attaching :attr:`session` lets a command run).

    ``by_thread`` splits every function by thread; ``string_size`` bounds the bytes kept of names and
    paths (default 128); ``gc=False`` leaves garbage collections untimed."""

    def __init__(self, pid: Optional[int] = None, command: Optional[Sequence[str]] = None, by_thread: bool = False,
                 string_size: Optional[int] = None, command_stdout: Optional[int] = None, gc: bool = True,
                 source: Optional[str] = None, paths: bool = False) -> None:
        if source not in (None, "pycalls", "python"):
            raise UsageError(f"source {source!r}: use pycalls, python, or None to choose")
        if paths and source == "python":
            raise UsageError(PATHS_NEED)
        self.by_thread = by_thread
        where = f"pid {pid}" if command is None else str(command[0]) if command else "the command"
        options = dict(events=False, string_size=string_size, pid=pid, command=command, command_stdout=command_stdout)
        sources = {"pycalls": (PYCALLS,), "python": (PYTHON,), None: (PYCALLS, PYTHON)}[source]
        # A command declares the pycalls provider as it starts, if at all: wait for it only where it will
        # come (asked for, or a command run under usdtkit.instrument), else read CPython's own probes.
        waits = command is not None and (source == "pycalls" or instrumented(command))
        self.paths: Optional[CallPaths] = None
        if paths:
            # Call paths need every entry and return in user space: one session of events, from which
            # the per-function rows come too (the same numbers the kernel's histograms would hold).
            self.paths = CallPaths(by_thread, str(SELF_NS))
            self.source = PYCALLS
            late = {} if command is None else {"declared_later": True}
            try:
                self.session = trace(ENTRY, PYCALLS.probe, **{**options, "events": True}, **late, strings=[0, 1],
                                     on_event=self.paths.feed, keep_events=0)
            except ProbeNotFound:
                raise ProbeNotFound(f"{where} has no pycalls probes: {PATHS_NEED}") from None
        else:
            self.source, self.session = self._calls(options, by_thread, where, sources, waits)
        try:
            self.gc_session = self._gc_session(pid) if gc else None
        except BaseException:
            self.session.close()
            raise

    @staticmethod
    def _calls(options: dict, by_thread: bool, where: str, sources: Tuple[CallSource, ...],
               waits: bool) -> Tuple[CallSource, Session]:
        """The first source the target has, and the session reading it."""
        for source in sources:
            late = {} if options["command"] is None else {"declared_later": waits and source is PYCALLS}
            try:
                return source, trace(source.probe, **options, **late, **_options(source, by_thread))
            except ProbeNotFound:
                continue
        raise ProbeNotFound(f"{where} has neither usdtkit's pycalls probes nor CPython's python:function__return: "
                            f"{INSTRUMENT_HINT}")

    def _gc_session(self, pid: Optional[int]) -> Optional[Session]:
        """A latency trace of the interpreter's collections in the same process, or None without the probes."""
        try:
            return trace_beside(self.session, GC_PROBES, pid, events=False, latency=True,
                                hist=HistSpec(Field("latency"), sum=True))
        except ProbeNotFound:
            return None

    # ------------------------------------------------------------------ lifecycle
    @property
    def sessions(self) -> List[Session]:
        """Every session, the garbage collector's first: attached in this order, the calls' last (with
        a command, attaching it lets the command run)."""
        return [s for s in (self.gc_session, self.session) if s is not None]

    def __enter__(self) -> "PyCalls":
        try:
            for session in self.sessions:
                session.attach()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Detach both programs (idempotent); results stay readable."""
        try:
            self.session.close()
        finally:
            if self.gc_session is not None:
                self.gc_session.close()

    # ------------------------------------------------------------------ results
    def functions(self) -> List[FunctionCalls]:
        """One row per function (and thread), the most costly first: by total time where the source
        times calls, else by calls."""
        if self.paths is not None:
            return timed_rows(self.paths.histograms(), str(SELF_NS), self.by_thread)
        if self.source.timed:
            return timed_rows(self.session.histograms(), str(SELF_NS), self.by_thread)
        return counted_rows(self.session.counts(), self.by_thread)

    def gc(self) -> Optional[GcPauses]:
        """Garbage collections seen, or None where the interpreter has no GC probes."""
        if self.gc_session is None:
            return None
        return GcPauses.from_histograms(self.gc_session.histograms())

    def untimed_reason(self) -> Optional[str]:
        """Why the calls carry no times (None when they do)."""
        if self.source.timed:
            return None
        reason = ("times need usdtkit.instrument's probes (`python -m usdtkit.instrument script.py`, "
                  "usdtkit.instrument.enable() in the program, or USDTKIT_INSTRUMENT=1 in its environment)")
        binaries = {probe.binary for probe in self.session.plan.probes}
        if any(known_issues(binary, "python", "function__entry") for binary in binaries):
            reason += ("; this interpreter's python:function__entry cannot time calls: it fires only for frames "
                       "entered from C, not for Python-to-Python calls")
        return reason

