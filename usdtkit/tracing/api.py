"""The Python entry point for tracing: :func:`trace` turns options into a request, resolves it into a
plan and returns a session.

    with usdtkit.trace("usdt:./app:demo:tick", count_by=["arg0"]) as t:
        t.run(duration=2)
    print(t.counts())

Everything a user passes is parsed into typed values (:func:`usdtkit.plan.request.make_request`) before
any file is read or any C is generated.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from ..bpf.backend import Backend
from ..errors import UsageError
from ..plan import late
from ..plan.plan import AttachPlan, make_plan
from ..plan.refs import ProbeRef, parse_probe
from ..plan.request import Target, make_request
from .late import LateSession
from .launch import GatedCommand
from .rendezvous import Rendezvous
from .session import EventCallback, Session


def build_plan(probes: Sequence[Union[str, ProbeRef]], pid: Optional[int] = None, cgroup: Optional[str] = None,
               follow: bool = False, **options: object) -> AttachPlan:
    """Parse, validate and resolve a trace: :func:`make_request` options, against process ``pid`` (and
    its descendants with ``follow``) or the whole system, keeping only hits from cgroup v2 directory
    ``cgroup`` when given."""
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
        raise UsageError(f"invalid pid {pid!r}")
    request = make_request(list(probes) if not isinstance(probes, (str, ProbeRef)) else [probes],
                           target=Target(pid, cgroup=cgroup, follow=follow), **options)  # type: ignore[arg-type]
    return make_plan(request)


def trace(*probes: Union[str, ProbeRef], on_event: Optional[EventCallback] = None,
          command: Optional[Sequence[str]] = None, command_stdout: Optional[int] = None,
          keep_events: Optional[int] = 1_000_000, pid: Optional[int] = None, cgroup: Optional[str] = None,
          follow: bool = False, backend: Optional[Backend] = None, declared_later: Optional[bool] = None,
          **options: object) -> Session:
    """Build a trace of ``probes``; use the result as a context manager to attach and detach.

    Options are those of :func:`usdtkit.plan.request.make_request` (``filters``, ``events``, ``strings``,
    ``string_size``, ``count_by``, ``hist``, ``hist_by``, ``latency``, ``pair_keys``, ``stacks``,
    ``buffer_size`` or ``ring_pages``, ``unsafe``).  ``pid=PID`` traces one running process;
    ``cgroup=PATH`` keeps only hits from the tasks of one cgroup v2 directory (a container, a systemd
    service); ``follow=True`` adds the descendants of ``pid`` or of ``command``, alive at attach time or
    started later (the trace still
    ends when ``pid`` or ``command`` exits).  ``command=[argv...]`` starts
    that program with the probes attached before its first instruction (probe specs may leave the
    binary empty); the session ends when it exits, and closing the session stops it and everything it
    started (``command_stdout``: an fd for its output, ``subprocess.PIPE`` for
    ``session.command.process.stdout``).  A command's ``usdt::PROVIDER:NAME`` that its executable lacks
    is a probe the command declares at run time (:mod:`usdtkit.provider`): the session
    (a :class:`~usdtkit.tracing.late.LateSession`) attaches it when the command loads the provider, before
    its first hit, and ``session.waiting`` names those not declared (yet).  ``declared_later=True`` makes
    every ``usdt::PROVIDER:NAME`` wait so, even one the executable has; ``False``, none (one it lacks is
    then :class:`~usdtkit.errors.ProbeNotFound` at once).  ``keep_events`` bounds the events kept in
    ``session.events`` (None: all, 0: none; ``on_event`` still sees them all).
    """
    if declared_later not in (None, True, False):
        raise UsageError(f"declared_later is True, False or None, not {declared_later!r}")
    if command is None:
        if command_stdout is not None:
            raise UsageError("command_stdout is where a started command writes: give command= as well")
        if declared_later:
            raise UsageError("declared_later waits for a command's declarations: give command= as well")
        plan = build_plan(list(probes), pid=pid, cgroup=cgroup, follow=follow, **options)
        try:
            return Session(plan, on_event=on_event, keep_events=keep_events, backend=backend)
        except BaseException:
            plan.close()
            raise
    if pid is not None:
        raise UsageError("give a command or a pid, not both")
    argv = [str(a) for a in command]
    if not argv:
        raise UsageError("empty command")
    # Validate everything the user typed before anything is started.
    make_request(list(probes), target=Target(), **options)  # type: ignore[arg-type]
    specs = [p if isinstance(p, ProbeRef) else parse_probe(p) for p in probes]
    may_wait = declared_later is not False and any(late.may_wait(ref) for ref in specs)
    rendezvous = Rendezvous() if may_wait else None
    try:
        gated = GatedCommand(argv, stdout=command_stdout, rendezvous=rendezvous)
    except BaseException:
        if rendezvous is not None:
            rendezvous.close()
        raise
    try:
        waiting: Sequence[ProbeRef] = ()
        if declared_later:
            waiting = tuple(ref for ref in specs if late.may_wait(ref))
        elif rendezvous is not None:
            waiting = late.waiting(specs, gated.executable)
        if waiting:
            return LateSession(specs, waiting, gated, rendezvous, options, cgroup, follow,  # type: ignore[arg-type]
                               on_event=on_event, keep_events=keep_events, backend=backend)
        if rendezvous is not None:
            rendezvous.close()  # the command's loads find nobody listening, and do not wait
        request = make_request(list(probes), target=Target(gated.pid, gated.executable, cgroup, follow),
                               **options)  # type: ignore[arg-type]
        plan = make_plan(request)
        try:
            return Session(plan, on_event=on_event, keep_events=keep_events, command=gated, backend=backend)
        except BaseException:
            plan.close()
            raise
    except BaseException:
        if rendezvous is not None:
            rendezvous.close()
        gated.stop()
        raise


def trace_beside(session: Session, probes: Sequence[Union[str, ProbeRef]], pid: Optional[int] = None,
                 cgroup: Optional[str] = None, follow: bool = False, **options: object) -> Session:
    """A second trace of the process ``session`` traces: the command it started (gated until ``session``
    attaches, so attach this one first), else process ``pid`` (or the whole system).  ``options`` are
    :func:`make_request`'s; the returned session is not attached yet."""
    gated = getattr(session, "command", None)
    target = (Target(gated.pid, gated.executable, cgroup, follow) if gated is not None
              else Target(pid, None, cgroup, follow))
    plan = make_plan(make_request(list(probes), target=target, **options))  # type: ignore[arg-type]
    try:
        return Session(plan)
    except BaseException:
        plan.close()
        raise
