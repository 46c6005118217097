"""Tracing a command whose probes it declares at run time: a session of sessions.

``usdtkit trace -c 'python3 svc.py' usdt::svc:order``: ``svc`` is a runtime provider
(:mod:`usdtkit.provider`), which exists once ``svc.py`` has loaded it, so there is nothing to attach
before the command starts, and attaching once it runs would miss its first hits.  A
:class:`LateSession` catches it at the moment it appears:

1. Specs of the form ``usdt::PROVIDER:NAME`` that the executable does not have *wait*
   (:func:`usdtkit.plan.late.waiting`).  The others are planned, compiled and attached before the
   command runs, as always, as an ordinary :class:`~usdtkit.tracing.session.Session`.
2. The command starts with a rendezvous (:mod:`.rendezvous`) and is released.
3. A thread of the tracer serves announcements: each provider a process of the command loads is looked
   up among the waiting specs; what it declares is planned in that process (the very object it
   announced), compiled and attached as a session of its own, and then the process is answered and goes
   on, firing into attached probes.  The process waits for that (at most
   ``USDTKIT_RENDEZVOUS_TIMEOUT`` seconds, 5 by default; compiling takes well under one): a later
   attach is reported, since the first hits may be missing.  An object already attached (one file
   loaded again, or by another process when following children: a probe on a file covers every process
   mapping it) or a provider no spec waits for is answered at once, and so is a process the trace does
   not cover (a child, when not following children).
4. Results are the sum of the sessions' (:mod:`usdtkit.collect.merge`).  Events come from each session
   as they are read, so across sessions they are in the order of reading, not of time.

The session ends as any command's: when the command exits, or is stopped.  :attr:`LateSession.waiting`
then names the specs no process declared, and :meth:`LateSession.undeclared` says so in one line.

Limits: the two probes of a latency pair wait together (one provider) or not at all.  A worker started
with its descriptors closed (``subprocess``, ``multiprocessing``'s spawn and forkserver) has no
rendezvous, so its loads are not waited for (forked workers have it).  Errors found while attaching a
declaration (a filter reading an argument the declared probe lacks) end the trace, raised by
:meth:`poll`.
"""
from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..bpf.backend import Backend
from ..bpf.layout import Attachment
from ..collect.merge import merge_counts, merge_histograms, merge_stats
from ..collect.results import Counts, Histogram, ProbeStats
from ..errors import NoSuchProcess, UsageError
from ..plan import late
from ..plan.matching import names_provider
from ..plan.plan import AttachPlan, make_plan
from ..plan.refs import ProbeRef
from ..plan.request import Target, make_request
from .launch import GatedCommand, describe_exit
from .rendezvous import TIMEOUT_ENVIRONMENT, Announcement, Rendezvous
from .session import EventCallback, Session


class LateSession(Session):
    """A started command traced by one session for the probes found at start and one per declaration
    of waiting probes (see the module doc).  It is used as a :class:`Session` is."""

    def __init__(self, specs: Sequence[ProbeRef], waiting: Sequence[ProbeRef], command: GatedCommand,
                 rendezvous: Rendezvous, options: Dict[str, object], cgroup: Optional[str] = None,
                 follow: bool = False, on_event: Optional[EventCallback] = None,
                 keep_events: Optional[int] = 1_000_000, backend: Optional[Backend] = None) -> None:
        """``specs``: every probe spec of the trace; ``waiting``: those the command declares later;
        ``options``: those of :func:`usdtkit.plan.request.make_request`."""
        self._init_delivery(bool(options.get("events", True)), on_event, keep_events)
        now = [ref for ref in specs if ref not in waiting]
        if options.get("latency") and (now or len({ref.provider for ref in waiting}) > 1):
            raise UsageError(f"latency between {' and '.join(map(str, specs))}: the start and done probes are "
                             "both declared at run time by one provider, or both found in the command's files")
        self.command = command
        self.on_notice: Optional[Callable[[str], None]] = None  # each notice, as it is made (else kept only)
        self.notices: List[str] = []
        self.target_exited = False
        self.attach_seconds = 0.0
        self.warnings: List[str] = []
        self._waiting = tuple(waiting)
        self._declared: Set[ProbeRef] = set()
        self._seen: List[Tuple[int, str, str]] = []  # (pid, provider, what came of it) of every announcement
        self._options = options
        self._target = (cgroup, follow)
        self._backend = backend
        self._rendezvous = rendezvous
        self._parts: List[Session] = []
        self._objects: Set[Tuple[int, int]] = set()  # (device, inode) of every object attached
        self._lock = threading.Lock()
        self._failure: Optional[BaseException] = None
        self._pidfd: Optional[int] = None
        self._attached = False
        self._closed = False
        self._now: Optional[Session] = None
        if now:
            plan = make_plan(make_request(now, target=Target(command.pid, command.executable, cgroup, follow),
                                          **options))  # type: ignore[arg-type]
            try:
                self._now = self._part(plan)
            except BaseException:
                plan.close()
                raise
            self.warnings = list(self._now.warnings)
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)  # wakes the thread to end it
        self._thread = threading.Thread(target=self._serve, name="usdtkit-rendezvous", daemon=True)

    # ------------------------------------------------------------------ what is attached
    @property
    def plan(self) -> Optional[AttachPlan]:  # type: ignore[override]
        """The plan of the probes found at start (None when every probe waits)."""
        return self._now.plan if self._now is not None else None

    @property
    def waiting(self) -> Tuple[ProbeRef, ...]:
        """The specs no process of the command has declared (yet)."""
        return tuple(ref for ref in self._waiting if ref not in self._declared)

    @property
    def attachments(self) -> Tuple[Attachment, ...]:
        return tuple(a for part in list(self._parts) for a in part.attachments)

    @property
    def labels(self) -> List[str]:  # type: ignore[override]
        return list(dict.fromkeys(label for part in list(self._parts) for label in part.labels))

    @property
    def perf_lost(self) -> int:  # type: ignore[override]
        return sum(part.perf_lost for part in list(self._parts))

    def _part(self, plan: AttachPlan) -> Session:
        part = Session(plan, on_event=self._deliver if self.collects_events else None, keep_events=0,
                       backend=self._backend)
        if self._stop:
            part.stop()
        return part

    # ------------------------------------------------------------------ lifecycle
    def attach(self) -> "LateSession":
        """Attach the probes found at start, start serving declarations, then let the command run."""
        if self._attached:
            raise UsageError("this session is attached already")
        if self._closed:
            raise UsageError("this session has ended (its files are closed); start a new one")
        started = time.monotonic()
        try:
            if self._now is not None:
                self._now.attach()
                self._parts.append(self._now)
            try:
                self._pidfd = os.pidfd_open(self.command.pid)
            except (AttributeError, OSError):
                self._pidfd = None
            self._thread.start()
            self._attached = True
            self.attach_seconds = time.monotonic() - started
            self.command.release()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def attached(self) -> bool:
        return self._attached and not self._closed

    def close(self) -> None:
        """Stop serving (waiting processes go on), detach every session, stop the command (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._wake_write, b"x")
            if self._thread.is_alive():
                self._thread.join()  # a declaration being attached is attached first, and closed below
        finally:
            with contextlib.ExitStack() as stack:  # every step runs; they run from the last added
                stack.callback(os.close, self._wake_read)
                stack.callback(os.close, self._wake_write)
                if self._pidfd is not None:
                    stack.callback(os.close, self._pidfd)
                stack.callback(self.command.stop)
                for part in {id(p): p for p in [*self._parts, *([self._now] if self._now else [])]}.values():
                    stack.callback(part.close)
                stack.callback(self._rendezvous.close)

    def stop(self) -> None:
        super().stop()
        for part in list(self._parts):
            part.stop()

    def resume(self) -> None:
        super().resume()
        for part in list(self._parts):
            part.resume()

    # ------------------------------------------------------------------ serving declarations
    def _serve(self) -> None:
        """The thread that answers the command's announcements, attaching what they declare first."""
        try:
            while not self._closed:
                announcement = self._rendezvous.receive(wake=self._wake_read)
                if announcement is not None:
                    self._answer(announcement)
        except BaseException as exc:
            if self._failure is None and not self._closed:
                self._failure = exc
        finally:
            self._rendezvous.close()  # no process waits for a tracer that no longer answers

    def _answer(self, announcement: Announcement) -> None:
        """Attach what ``announcement`` declares, then let its process go on."""
        outcome = "failed"
        try:
            outcome = self._declaration(announcement)
        except NoSuchProcess:
            outcome = "gone"  # it exited while being looked at: nothing of it to trace
        except BaseException as exc:
            if self._failure is None:
                exc.args = (f"{announcement.provider}, declared by pid {announcement.pid}: {exc}",)
                self._failure = exc  # before the answer: raised before the command can exit
        finally:
            self._seen.append((announcement.pid, announcement.provider, outcome))
            announcement.answer()
        late = time.monotonic() - announcement.deadline
        if late > 0:
            self._notice(f"warning: pid {announcement.pid} stopped waiting for the trace {late:.2f}s before "
                         f"it was answered: its first hits of {announcement.provider} may be missing (it waits "
                         f"{TIMEOUT_ENVIRONMENT} seconds, 5 unless set)")

    def _declaration(self, announcement: Announcement) -> str:
        """Attach what ``announcement`` declares of the waiting specs, if anything; say what came of it
        (``attached``, ``covered``, ``without`` the probes waited for, ``untraced``: not the command's)."""
        pid, provider = announcement.pid, announcement.provider
        cgroup, follow = self._target
        if not follow and pid != self.command.pid:
            return "untraced"
        if (announcement.device, announcement.inode) in self._objects:
            return "covered"
        found = late.declared(self._waiting, pid, provider, announcement.device, announcement.inode)
        if not found or (self._options.get("latency") and len(found) != 2):
            return "without"
        started = time.monotonic()
        request = make_request([bound for _, bound in found], target=Target(pid, cgroup=cgroup, follow=follow),
                               **self._options)  # type: ignore[arg-type]
        # Resolved in the declaring process, filtered on the command (and its descendants when following).
        plan = make_plan(request)
        try:
            plan = replace(plan, pid=self.command.pid)
            part = self._part(plan)
        except BaseException:
            plan.close()
            raise
        part.attach()
        with self._lock:
            self._parts.append(part)
            self._objects.add((announcement.device, announcement.inode))
            self._declared.update(ref for ref, _ in found)
        for warning in part.warnings:
            self._notice(f"warning: {warning}")
        self._notice(f"Attached {len(part.attachments)} site(s) of {', '.join(part.labels)}, declared by pid "
                     f"{pid}, in {time.monotonic() - started:.2f}s.")
        return "attached"

    def _notice(self, text: str) -> None:
        self.notices.append(text)
        if self.on_notice is not None:
            self.on_notice(text)

    def undeclared(self) -> Optional[str]:
        """One line naming the specs no process declared, and why when it can tell; None when all were."""
        if not self.waiting:
            return None
        code = self.command.process.returncode
        names = ", ".join(map(str, self.waiting))
        how = (f"exited ({describe_exit(code)}) without declaring {names}" if code is not None
               else f"did not declare {names} while traced")
        hints = []
        for ref in self.waiting:
            pids = {outcome: sorted({pid for pid, provider, what in self._seen
                                     if what == outcome and names_provider(ref, provider)})
                    for outcome in ("untraced", "gone", "without")}
            if pids["untraced"]:
                hints.append(f"pid {', '.join(map(str, pids['untraced']))}, a child of the command, declared "
                             f"{ref.provider}: follow children with -F (follow=True)")
            elif pids["gone"]:
                hints.append(f"pid {', '.join(map(str, pids['gone']))} declared {ref.provider} and exited before "
                             "it could be traced")
            elif pids["without"]:
                hints.append(f"{ref.provider} was declared without {ref.name}")
        why = f" ({'; '.join(hints)})" if hints else (
            " (probes of a runtime provider are caught when the command loads it with usdtkit.provider or "
            "usdtkit's libstapsdt)")
        return f"{self.command.name} {how}{why}"

    # ------------------------------------------------------------------ collecting
    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def poll(self, timeout: float = 0.1) -> None:
        """Deliver pending events of every session (waiting up to ``timeout`` for the first); notice the
        command's exit; raise what went wrong attaching a declaration."""
        self._raise_failure()
        parts = list(self._parts)
        if parts:
            parts[0].poll(timeout)
            for part in parts[1:]:
                part.poll(0)
        elif self._pidfd is not None:
            select.select([self._pidfd], [], [], max(timeout, 0.0))
        else:
            time.sleep(max(timeout, 0.0))
        if self._pidfd is not None and not self.target_exited and select.select([self._pidfd], [], [], 0)[0]:
            self.target_exited = True
            self.drain(until_empty=True)
        self._raise_failure()

    def drain(self, until_empty: bool = False) -> None:
        for part in list(self._parts):
            part.drain(until_empty)

    def undelivered(self) -> int:
        return sum(part.undelivered() for part in list(self._parts))

    def stats(self) -> Dict[str, ProbeStats]:
        return merge_stats(part.stats() for part in list(self._parts))

    def counts(self) -> Optional[Counts]:
        return merge_counts(part.counts() for part in list(self._parts))

    def histograms(self) -> Dict[object, Histogram]:
        return merge_histograms(part.histograms() for part in list(self._parts))

    def followed(self) -> List[int]:
        return sorted({pid for part in list(self._parts) for pid in part.followed()})

    def children_not_followed(self) -> int:
        return sum(part.children_not_followed() for part in list(self._parts))

    def forget_counts(self, keys: Sequence[Tuple]) -> int:
        return sum(part.forget_counts(keys) for part in list(self._parts))

    def run_stats(self) -> Tuple[int, int]:
        readings = [part.run_stats() for part in list(self._parts)]
        return sum(r[0] for r in readings), sum(r[1] for r in readings)
