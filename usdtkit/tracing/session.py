"""A trace session: load, attach, read, detach — as a context manager.

``with Session(plan) as session:`` generates the program for an :class:`~usdtkit.plan.plan.AttachPlan`,
loads it through a backend (:mod:`usdtkit.bpf.backend`; bcc by default) and attaches every call site
of every probe; leaving the block (normally, by an exception, or by a signal turned into one)
detaches everything.  Detaching closes the uprobe links and perf events: the kernel removes the
breakpoints and the semaphore counts it added, and frees the programs and maps.  A tracer killed with
SIGKILL loses its fds the same way, so nothing is left behind even then.

The session only attaches, detaches and reads: results are copied out of the maps into plain objects
(:mod:`usdtkit.collect`) by :meth:`Session.counts`, :meth:`Session.histograms`, :meth:`Session.stats`
and the event list, and :meth:`Session.poll` delivers pending events.  How long to collect, what to do
on a signal or when the target exits is the run loop's business (:mod:`.runloop`).
"""
from __future__ import annotations

import os
import select
import time
from collections import deque
from typing import Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from ..bpf import capabilities, codegen
from ..bpf.backend import Backend, LoadedProgram
from ..collect.readout import MapReader
from ..collect.native import native_decoder
from ..collect.records import ProbeDecoder, RecordDecoder
from ..collect.results import Counts, Event, Histogram, ProbeStats
from ..collect.symbolize import Symbolizer
from ..elf.ifunc import ifunc_warning
from ..elf.known_issues import known_issues
from ..errors import AttachError, EnvironmentProblem, NoSuchProcess, UsageError
from ..plan import site_cost
from ..plan.plan import AttachPlan
from ..plan.resolve import Site
from . import follow
from .launch import GatedCommand
from .semaphores import SemaphoreWriter

EventCallback = Callable[[Event], None]
CONSUME_BUDGET_S = 0.2  # the longest one poll may spend delivering records while they keep coming


def _default_backend() -> Backend:
    """The object cache, else bcc; imported only when a session attaches (listing and planning never need it)."""
    from ..bpf.caching_backend import CachingBackend

    return CachingBackend()


def _grouped(warnings: List[Tuple[str, str]], most: int = 3) -> List[str]:
    """``where: what`` lines, one per site unless many sites share a warning (a wildcard over a
    library): those are one line naming the first few."""
    by_text: Dict[str, List[str]] = {}
    for where, text in warnings:
        by_text.setdefault(text, []).append(where)
    lines = []
    for text, places in by_text.items():
        if len(places) <= most:
            lines += [f"{where}: {text}" for where in places]
        else:
            lines.append(f"{len(places)} sites ({', '.join(places[:most])}, ...): {text}")
    return lines


def _power_of_two(n: int) -> int:
    return 1 << (n.bit_length() - 1)


class Session:
    """Attach an :class:`AttachPlan`, collect in the kernel, read results; detach on exit."""

    def __init__(self, plan: AttachPlan, on_event: Optional[EventCallback] = None,
                 keep_events: Optional[int] = 1_000_000, command: Optional[GatedCommand] = None,
                 backend: Optional[Backend] = None) -> None:
        self._init_delivery(plan.events, on_event, keep_events)
        self.plan = plan
        self.command = command
        self.perf_lost = 0
        self.delivered = 0  # records handed over by the backend
        self.uses_ringbuf = capabilities.detect().has_ringbuf
        self.layout = codegen.generate(plan, self.uses_ringbuf, capabilities.detect().has_bpf_cookie)
        self.labels = plan.labels()
        self._symbolizer = Symbolizer()
        self._reader = MapReader(plan, self.layout, self.labels, self._symbolizer)
        self._records: Optional[RecordDecoder] = None
        self._native = None  # the C decoder of usdtkit.collect.native, where it was built
        if plan.events and self.layout.record is not None:
            self._records = RecordDecoder(self.layout.record, [self._probe_decoder(i) for i in range(len(plan.probes))],
                                          plan.string_size, self._event_stack if plan.stacks else None)
            self._native = native_decoder(self._records)
        self._backend = backend
        self._program: Optional[LoadedProgram] = None
        self._final: Dict[str, object] = {}
        self._closed = False
        self._pidfd: Optional[int] = None
        self.target_exited = False
        self.attach_seconds = 0.0
        self.warnings: List[str] = self._site_warnings()
        self._semaphores: Optional[SemaphoreWriter] = None
        self._semaphores_done: set = set()

    def _init_delivery(self, events: bool, on_event: Optional[EventCallback], keep_events: Optional[int]) -> None:
        """Where events go: a stream, the kept ``events``, the callback (see :meth:`_deliver`)."""
        if keep_events is not None and keep_events < 0:
            raise UsageError("keep_events must be 0 or more (or None for all)")
        if not events and on_event is not None:
            raise UsageError("on_event receives events, and this trace collects none (events=False)")
        self.collects_events = events
        self.on_event = on_event
        self.keep_events = keep_events  # how many recent events stay in `events` (None: all; 0: none)
        self.events: Deque[Event] = deque(maxlen=keep_events)
        self._stream: Optional[Deque[Event]] = None
        self._json_out: Optional[Tuple[int, Optional[int]]] = None  # see write_json
        self.native = False  # records are read and decoded in C (usdtkit.collect.native)
        self._stop = False
        self._callback_error: Optional[BaseException] = None
        self.dropped_by_user_queue = 0

    # ------------------------------------------------------------------ what was planned
    @property
    def attachments(self) -> Tuple[codegen.Attachment, ...]:
        return self.layout.attachments

    def _site_warnings(self) -> List[str]:
        """Warnings known before attaching: expensive uprobe sites, IFUNC resolvers, misfiring USDT probes."""
        out: List[str] = []
        costly: List[Tuple[str, str]] = []
        resolvers: List[Tuple[str, str]] = []
        for probe in self.plan.probes:
            if probe.ref.is_usdt:  # USDT sites are NOPs: the cheapest kind, but some builds misfire them
                files = dict.fromkeys((s.attach_path, s.path) for s in probe.sites)
                out += [w.replace(opened, shown, 1) for opened, shown in files
                        for w in known_issues(opened, probe.ref.provider or "", probe.ref.name)]
                continue
            for site in probe.sites:
                warning = site_cost.describe_site(site_cost.read_site(site.attach_path, site.file_offset))
                if warning:
                    costly.append((f"{probe.label} at {site.path}+{site.file_offset:#x}", warning))
                pid = site.pid or (None if self.command else self.plan.pid)  # a gated command has not exec'd
                warning = ifunc_warning(site.attach_path, site.pc, pid, probe.ref.name)
                if warning:
                    resolvers.append((probe.label, warning))
        if len(resolvers) > 3:  # a wildcard over a library: one line, not one per function
            names = ", ".join(label for label, _ in resolvers[:8]) + (", ..." if len(resolvers) > 8 else "")
            out.append(f"{len(resolvers)} functions are indirect functions (IFUNC), whose symbol is the resolver "
                       f"run once at load time, so their probes miss the calls: {names}; probe an implementation "
                       "instead (usdtkit list --functions LIBRARY 'NAME*' lists them)")
        else:
            out += [f"{label}: {warning}" for label, warning in resolvers]
        return out + _grouped(costly)

    def _probe_decoder(self, index: int) -> ProbeDecoder:
        probe = self.plan.probes[index]
        mask = codegen.string_mask(self.plan, index)
        slots = [(slot, arg) for slot, arg in enumerate(self.plan.event_strings)
                 if mask & (1 << slot) and arg < probe.arg_count]
        return ProbeDecoder(self.labels[index], probe.arg_count, self._reader.signs[index], slots,
                            probe.ref.is_return, self.plan.request.latency)

    def _event_stack(self, stack_id: int, pid: int, probe: int = -1, caller: int = 0) -> Optional[Tuple[str, ...]]:
        if self._program is None:
            return None
        self._symbolizer.observe(pid)
        return self._reader.frames(self._program, stack_id, pid, probe=probe, caller=caller)

    # ------------------------------------------------------------------ lifecycle
    def attach(self) -> "Session":
        """Load the program and attach every site; then let a started command run.  On any failure
        everything attached so far is detached again (and a started command stopped)."""
        if self._program is not None:
            raise UsageError("this session is attached already")
        if self._closed:
            raise UsageError("this session has ended (its files are closed); start a new one")
        started = time.monotonic()
        try:
            program = (self._backend or _default_backend()).load(self.layout)
            self._program = program
            pid = self.plan.pid
            if pid is not None:
                try:
                    self._pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    raise NoSuchProcess(pid) from None
                except (AttributeError, OSError):
                    self._pidfd = None
                if self.plan.follow:
                    follow.start(program, self.layout, pid)
                else:
                    program.set_config(0, pid)
            if self.plan.cgroup_id is not None:
                program.update_map("cgroup_target", (0).to_bytes(4, "little"), self.plan.cgroup_id)
            # Following, every process mapping a probe's file is probed: the program keeps the followed.
            self._attach_sites(program, -1 if pid is None or self.plan.follow else pid)
            self._reader.observe_stack_owners(program)
            if self.plan.events:
                self.native = bool(program.open_events(
                    self._on_record, self._on_perf_lost,
                    pages=_power_of_two(max(8, self.plan.ring_pages // (os.cpu_count() or 1))),
                    drain=self._native_drain if self._native is not None else None))
            self.attach_seconds = time.monotonic() - started
            if self.command is not None:
                self.command.release()
                if self.plan.needs_stacks:
                    self._observe_after_exec(program)
        except BaseException:
            self.close()
            raise
        return self

    def _observe_after_exec(self, program: LoadedProgram, limit: float = 0.05) -> None:
        """Read a released command's mappings as soon as it runs its program: one that ends within
        milliseconds is gone before the next look, and its stacks would stay addresses."""
        assert self.command is not None
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{self.command.pid}/exe") == self.command.executable:
                    break
            except OSError:
                return  # exited already
            time.sleep(0.002)
        self._reader.observe_stack_owners(program)

    def _attach_sites(self, program: LoadedProgram, pid: int) -> None:
        """Attach sites grouped by function, file, side and pid: one link (or call) per group."""
        kernel_counts = capabilities.detect().has_sema_refcnt
        groups: Dict[Tuple[str, str, bool, int], Tuple[List[int], List[int], List[int]]] = {}
        for attachment in self.layout.attachments:
            site = attachment.site
            ref_ctr = site.ref_ctr_offset if kernel_counts else 0
            if site.ref_ctr_offset and not kernel_counts:
                self._write_semaphore(site)
            site_pid = site.pid if site.pid is not None else pid
            offsets, ref_ctrs, cookies = groups.setdefault((attachment.function, site.attach_path,
                                                            attachment.retprobe, site_pid), ([], [], []))
            offsets.append(site.file_offset)
            ref_ctrs.append(ref_ctr)
            if attachment.cookie is not None:  # set on every site of a shared function, on none of others
                cookies.append(attachment.cookie)
        shown = {s.attach_path: s.path for s in (a.site for a in self.layout.attachments)}
        for (function, path, retprobe, site_pid), (offsets, ref_ctrs, cookies) in groups.items():
            try:
                program.attach(function, path, offsets, ref_ctrs, site_pid, retprobe, cookies or None)
            except (AttachError, EnvironmentProblem) as exc:
                if path == shown.get(path, path):
                    raise
                raise type(exc)(str(exc).replace(path, shown[path])) from None

    def _write_semaphore(self, site: Site) -> None:
        """Fallback for kernels without ref_ctr_offset: raise the semaphore ourselves, once per site."""
        pid = site.pid if site.pid is not None else self.plan.pid
        if self.plan.follow:
            raise EnvironmentProblem("this kernel cannot maintain USDT semaphores in processes started after "
                                     f"attaching (no uprobe ref_ctr_offset): {site.path} has semaphores; "
                                     "trace without following children")
        if pid is None:
            raise EnvironmentProblem("this kernel cannot maintain USDT semaphores for all processes; "
                                     "trace one process with a PID")
        key = (pid, site.attach_path, site.ref_ctr_offset)
        if key in self._semaphores_done:
            return
        if self._semaphores is None:
            self._semaphores = SemaphoreWriter()
        try:
            self._semaphores.acquire(pid, site.attach_path, site.ref_ctr_offset)
        except AttachError as exc:
            raise AttachError(str(exc).replace(site.attach_path, site.path)) from None
        self._semaphores_done.add(key)

    def close(self) -> None:
        """Detach everything and release the program, the plan's files and a started command
        (idempotent).  Results stay readable."""
        program, self._program = self._program, None
        self._closed = True
        try:
            if program is not None:
                self._final = self._snapshot(program)
                program.close()
        finally:
            writer, self._semaphores = self._semaphores, None
            if writer is not None:
                writer.close()
                self._semaphores_done.clear()
            if self.command is not None:
                self.command.stop()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self.plan.close()

    def __enter__(self) -> "Session":
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def attached(self) -> bool:
        return self._program is not None

    # ------------------------------------------------------------------ events
    def _on_record(self, data: bytes) -> bool:
        """Each record from the backend; returns True to stop consuming.  An exception (a callback's,
        a Ctrl-C raised inside it) is kept and raised by :meth:`poll`, never lost in the backend."""
        if self._stop or self._callback_error is not None:
            return True  # left unread: counted by undelivered()
        self.delivered += 1
        try:
            self._deliver(self._records.decode(data))  # type: ignore[union-attr]
        except BaseException as exc:  # KeyboardInterrupt and signal-raised exceptions included
            self._callback_error = exc
            return True
        return self._stop

    def write_json(self, fd: int, limit: Optional[int] = None) -> None:
        """Where records are read in C (:attr:`native`, known once attached), write each as its JSON
        line (``json.dumps(event.to_json(), ensure_ascii=False)``) to ``fd`` instead of delivering it,
        and stop after ``limit`` of them.  Call before attaching; elsewhere events are delivered."""
        self._json_out = (fd, limit)

    def _native_drain(self, consumer: object, producer: object, mask: int, budget_s: float) -> Tuple[int, bool]:
        """The ring buffer's records through the C decoder (see :meth:`_on_record` for the same in
        Python): as JSON lines, or as Events for the stream or the kept events, then ``on_event``."""
        decoder = self._native
        if self._stop or self._callback_error is not None or decoder is None:
            return 0, True
        before = decoder.delivered
        kept = None
        try:
            if self._json_out is not None:
                fd, limit = self._json_out
                left = -1 if limit is None else max(0, limit - self.delivered)
                count, stopped = decoder.drain_json(consumer, producer, mask, budget_s, fd, left)
                if limit is not None and self.delivered + count >= limit:
                    self._stop = True
                return count, stopped
            target = self._stream if self._stream is not None else (self.events if self.keep_events != 0 else None)
            kept = (target, len(target)) if target is not None else None
            return decoder.drain_events(consumer, producer, mask, budget_s, None if target is None else target.append,
                                        self.on_event, self)
        except BaseException as exc:  # as in _on_record: kept and raised by poll(), never lost in the backend
            self._callback_error = exc
            return 0, True
        finally:
            self.delivered += decoder.delivered - before
            if kept is not None and kept[0] is self.events and self.events.maxlen is not None:
                self.dropped_by_user_queue += max(0, kept[1] + decoder.delivered - before - len(self.events))

    def _deliver(self, event: Event) -> None:
        """Hand an event to a stream in progress or to the kept events, then to ``on_event``."""
        if self._stream is not None:
            self._stream.append(event)
        elif self.keep_events != 0:
            if self.events.maxlen is not None and len(self.events) == self.events.maxlen:
                self.dropped_by_user_queue += 1
            self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def stop(self) -> None:
        """Stop delivering events (callable from ``on_event`` or a signal handler); a run loop returns
        at its next check."""
        self._stop = True

    def resume(self) -> None:
        """Deliver events again after :meth:`stop`."""
        self._stop = False

    @property
    def stopped(self) -> bool:
        return self._stop

    def _raise_callback_error(self) -> None:
        error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error

    def _on_perf_lost(self, count: int) -> None:
        # Already counted per probe in `stats` when perf_submit failed; kept for diagnostics.
        self.perf_lost += count

    def poll(self, timeout: float = 0.1) -> None:
        """Deliver pending events (for at most about :data:`CONSUME_BUDGET_S` while they keep coming,
        waiting up to ``timeout`` for the first); notice the target's exit."""
        program = self._program
        if program is None:
            return
        self._reader.observe_stack_owners(program)
        if self.plan.events and not self._stop:
            program.consume(max(0, int(timeout * 1000)), min(max(timeout, 0.01), CONSUME_BUDGET_S))
            self._raise_callback_error()
        else:
            self._wait_target(timeout)
        if self._pidfd is not None and not self.target_exited:
            ready, _, _ = select.select([self._pidfd], [], [], 0)
            if ready:
                self.target_exited = True
                self.drain(until_empty=True)

    def _wait_target(self, timeout: float) -> None:
        if self._pidfd is not None:
            select.select([self._pidfd], [], [], max(timeout, 0.0))
        else:
            time.sleep(max(timeout, 0.0))

    def drain(self, until_empty: bool = False) -> None:
        """Deliver the events already in the buffer, unless stopped: within the consume budget, or
        ``until_empty`` (when the target has exited, nothing refills it)."""
        while self._program is not None and self.plan.events and not self._stop:
            before = self.delivered
            self._program.consume(0, CONSUME_BUDGET_S)
            self._raise_callback_error()
            if not until_empty or self.delivered == before:
                break

    def undelivered(self) -> int:
        """Events written to the buffer but never read (still there when the trace ended)."""
        if not self.plan.events:
            return 0
        written = sum(s.hits - s.lost_events for s in self._per_probe_stats())
        return max(0, written - self.delivered)

    def _per_probe_stats(self) -> List[ProbeStats]:
        indexes = self.plan.handler_indexes()
        stats = self._current("per_probe") or []
        return [stats[i] for i in indexes if i < len(stats)]  # type: ignore[index]

    def run(self, duration: Optional[float] = None, until: Optional[Callable[[], bool]] = None,
            interval: float = 0.1) -> str:
        """Collect until ``duration`` seconds pass, ``until()`` is true, :meth:`stop` is called, or the
        target exits; returns why it stopped.  Ctrl-C raises ``KeyboardInterrupt`` here, with everything
        collected so far kept."""
        from .runloop import RunLoop

        loop = RunLoop(self, duration=duration, until=until, poll_interval=interval, raise_interrupt=True)
        return loop.run()

    def stream(self, duration: Optional[float] = None, interval: float = 0.1) -> Iterator[Event]:
        """Yield events as they arrive, until ``duration`` passes, :meth:`stop` is called or the target
        exits.  Events yielded here are not kept in :attr:`events`."""
        if not self.collects_events:
            raise UsageError("this trace collects no events (events=False)")
        from .runloop import RunLoop

        queue: Deque[Event] = deque()
        self._stream = queue
        try:
            loop = RunLoop(self, duration=duration, poll_interval=interval, raise_interrupt=True)
            for _ in loop.steps():
                while queue:
                    yield queue.popleft()
            while queue:
                yield queue.popleft()
        finally:
            self._stream = None

    def __iter__(self) -> Iterator[Event]:
        return self.stream()

    # ------------------------------------------------------------------ results
    def _snapshot(self, program: LoadedProgram) -> Dict[str, object]:
        """Everything the maps hold, read before the detach; a part that cannot be read is said in
        :attr:`warnings` and the other parts are kept (reading must never prevent the detach)."""
        out: Dict[str, object] = {"stats": {}}
        readers = {"stats": self._reader.stats, "counts": self._reader.counts, "hist": self._reader.histograms,
                   "per_probe": self._reader.per_probe, "follow": self._follow_state}
        for name, reader in readers.items():
            try:
                value = reader(program)
            except Exception as exc:
                self.warnings.append(f"could not read the {name} before detaching: {exc}")
                continue
            if name == "follow":
                out.update(value)  # type: ignore[arg-type]
            else:
                out[name] = value
        return out

    def _current(self, name: str) -> object:
        if self._program is not None:
            reader = {"stats": self._reader.stats, "counts": self._reader.counts,
                      "hist": self._reader.histograms, "per_probe": self._reader.per_probe}[name]
            return reader(self._program)
        return self._final.get(name)

    def _follow_state(self, program: LoadedProgram) -> Dict[str, object]:
        if not self.plan.follow:
            return {}
        return {"followed": follow.followed_pids(program), "follow_lost": follow.lost(program)}

    def followed(self) -> List[int]:
        """The processes followed now (the target and its descendants; at the end of the trace, those
        still alive then).  Empty unless the trace follows children."""
        state = self._follow_state(self._program) if self._program is not None else self._final
        return list(state.get("followed", ()))  # type: ignore[call-overload]

    def children_not_followed(self) -> int:
        """Children of followed processes that could not be followed (the map of followed processes
        was full)."""
        state = self._follow_state(self._program) if self._program is not None else self._final
        return int(state.get("follow_lost", 0))  # type: ignore[call-overload]

    def forget_counts(self, keys: Sequence[Tuple]) -> int:
        """Delete these rows (``Counts`` keys) from the kernel's count map, so a long-running reader keeps
        its memory flat when key values churn; a row seen again starts from zero.  Returns how many went."""
        program = self._program
        if program is None or self.layout.count_key is None or not keys:
            return 0
        wanted = set(keys)
        raw = [key for key, _ in program.read_map("counts")
               if tuple(self._reader.count_row(program, key)) in wanted]
        return program.delete_keys("counts", raw)

    def run_stats(self) -> Tuple[int, int]:
        """``(run_time_ns, run_count)`` the kernel counted for this session's programs while run-time
        statistics were on (:func:`usdtkit.bpf.prog_stats.enable_run_time_stats`); zeros once detached."""
        return self._program.run_stats() if self._program is not None else (0, 0)

    def stats(self) -> Dict[str, ProbeStats]:
        """Per-probe kernel counters (hits, and every kind of loss: see :class:`ProbeStats`)."""
        return self._current("stats") or {}  # type: ignore[return-value]

    def counts(self) -> Optional[Counts]:
        return self._current("counts")  # type: ignore[return-value]

    def histograms(self) -> Dict[object, Histogram]:
        """Histograms by probe label, or by ``(label, value)`` when split with ``HistSpec(by=...)``."""
        return self._current("hist") or {}  # type: ignore[return-value]
