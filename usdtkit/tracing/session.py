"""A trace session: compile, attach, collect, detach — as a context manager.

``with Session(spec) as session:`` attaches every call site of every probe; leaving the block (normally,
by an exception, or by a signal turned into one) detaches everything.  Detaching means closing the
uprobe perf events: the kernel removes the breakpoints and the semaphore counts it added, and frees the
programs and maps when the bcc module is destroyed.  A tracer killed with SIGKILL loses its fds the
same way, so nothing is left behind even then.

Results are copied out of the kernel maps into plain objects (:mod:`usdtkit.collect.results`) by
:meth:`Session.counts`, :meth:`Session.histograms`, :meth:`Session.stats` and the event list.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, Iterator, List, Optional, Tuple

from ..bpf import capabilities, codegen
from ..bpf.backend import Program
from ..collect.records import ProbeDecoder, RecordDecoder
from ..collect.results import Counts, Event, Histogram, ProbeStats
from ..collect.symbolize import Symbolizer
from ..errors import EnvironmentProblem, NoSuchProcess, UsageError
from . import site_cost
from .resolve import Site
from .launch import GatedCommand
from .semaphores import SemaphoreWriter
from .readout import MapReader, probe_labels
from .spec import TraceSpec

EventCallback = Callable[[Event], None]


def _power_of_two(n: int) -> int:
    return 1 << (n.bit_length() - 1)


class Session:
    """Attach a :class:`TraceSpec`, collect in the kernel, read results; detach on exit."""

    def __init__(self, spec: TraceSpec, on_event: Optional[EventCallback] = None,
                 keep_events: Optional[int] = 1_000_000, command: Optional["GatedCommand"] = None) -> None:
        self.spec = spec
        self.command = command
        self.on_event = on_event
        # keep_events: how many recent events stay in `events` (None: all; 0: none, for on_event users)
        if keep_events is not None and keep_events < 0:
            raise UsageError("keep_events must be 0 or more (or None for all)")
        self.keep_events = keep_events
        self.events: Deque[Event] = deque(maxlen=keep_events)
        self._stop = False
        self._callback_error: Optional[BaseException] = None
        self.dropped_by_user_queue = 0
        self.uses_ringbuf = capabilities.detect().has_ringbuf
        self.text, self.attachments = codegen.generate(spec, self.uses_ringbuf)
        self.perf_lost = 0
        self._records: Optional[RecordDecoder] = None
        self._string_masks = [codegen.string_mask(spec, i) for i in range(len(spec.probes))]
        self.labels = probe_labels(spec)
        self._symbolizer = Symbolizer()
        self._reader = MapReader(spec, self.labels, self._symbolizer)
        if spec.events:
            self._records = RecordDecoder(
                [self._probe_decoder(i) for i in range(len(spec.probes))], codegen.record_args(spec), len(spec.event_strings),
                spec.string_size, self._event_stack if spec.stacks else None)
        self._program: Optional[Program] = None
        self._pidfd: Optional[int] = None
        self.target_exited = False
        self.attach_seconds = 0.0
        self.warnings: List[str] = self._site_warnings()
        self._semaphores: Optional[SemaphoreWriter] = None
        self._semaphores_done: set = set()

    def _site_warnings(self) -> List[str]:
        """Warnings about expensive uprobe sites, known before attaching."""
        out = []
        for probe in self.spec.probes:
            if probe.ref.is_usdt:  # USDT sites are NOPs: the cheapest kind
                continue
            for site in probe.sites:
                warning = site_cost.describe_site(site_cost.read_site(site.path, site.file_offset))
                if warning:
                    out.append(f"{probe.label} at {site.path}+{site.file_offset:#x}: {warning}")
        return out

    def _probe_decoder(self, index: int) -> ProbeDecoder:
        probe = self.spec.probes[index]
        mask = self._string_masks[index]
        slots = [(slot, arg) for slot, arg in enumerate(self.spec.event_strings)
                 if mask & (1 << slot) and arg < probe.arg_count]
        signed = [sign for sign, _ in self._reader.signs[index]]
        has_latency = self.spec.function_latency or self.spec.pair is not None
        return ProbeDecoder(self.labels[index], probe.arg_count, signed, slots, probe.ref.is_return, has_latency)

    def _event_stack(self, stack_id: int, pid: int) -> Optional[Tuple[str, ...]]:
        if self._program is None:
            return None
        self._symbolizer.observe(pid)
        return self._reader.frames(self._program, stack_id, pid)

    # ------------------------------------------------------------------ lifecycle
    def attach(self) -> "Session":
        started = time.monotonic()
        program = Program(self.text)
        self._program = program
        pid = self.spec.pid if self.spec.pid is not None else -1
        try:
            if self.spec.pid is not None:
                try:
                    self._pidfd = os.pidfd_open(self.spec.pid)
                except ProcessLookupError:
                    raise NoSuchProcess(self.spec.pid) from None
                except (AttributeError, OSError):
                    self._pidfd = None
            kernel_counts = capabilities.detect().has_sema_refcnt
            groups: Dict[Tuple[str, str, bool, int], Tuple[List[int], List[int]]] = {}
            for function, site, retprobe in self.attachments:
                ref_ctr = site.ref_ctr_offset if kernel_counts else 0
                if site.ref_ctr_offset and not kernel_counts:
                    self._write_semaphore(site)
                site_pid = site.pid if site.pid is not None else pid
                offsets, ref_ctrs = groups.setdefault((function, site.path, retprobe, site_pid), ([], []))
                offsets.append(site.file_offset)
                ref_ctrs.append(ref_ctr)
            for (function, path, retprobe, site_pid), (offsets, ref_ctrs) in groups.items():
                program.attach_uprobes(function, path, offsets, ref_ctrs, site_pid, retprobe)
            self._observe_stack_owners()
            if self.spec.events and self.uses_ringbuf:
                program.open_ring_buffer("events", self._on_raw_event)
            elif self.spec.events:
                program.open_perf_buffer("events", self._on_raw_event, self._on_perf_lost,
                                         pages=_power_of_two(max(8, self.spec.ring_pages // (os.cpu_count() or 1))))
            if self.command is not None:
                self.command.release()
        except BaseException:
            self.close()
            raise
        self.attach_seconds = time.monotonic() - started
        return self

    def _write_semaphore(self, site: "Site") -> None:
        """Fallback for kernels without ref_ctr_offset: raise the semaphore ourselves, once per site."""
        pid = site.pid if site.pid is not None else self.spec.pid
        if pid is None:
            raise EnvironmentProblem("this kernel cannot maintain USDT semaphores for all processes; "
                                     "trace one process with a PID")
        key = (pid, site.path, site.ref_ctr_offset)
        if key in self._semaphores_done:
            return
        if self._semaphores is None:
            self._semaphores = SemaphoreWriter()
        self._semaphores.acquire(pid, site.path, site.ref_ctr_offset)
        self._semaphores_done.add(key)

    def close(self) -> None:
        """Detach everything and release the program (idempotent)."""
        program, self._program = self._program, None
        if program is not None:
            self._final = self._snapshot(program)
            program.close()
        writer, self._semaphores = self._semaphores, None
        if writer is not None:
            writer.close()
            self._semaphores_done.clear()
        if self.command is not None:
            self.command.stop()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def __enter__(self) -> "Session":
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ events
    def _on_raw_event(self, _ctx: object, data: int, _size: int) -> int:
        """Called by bcc for each record.  Never lets an exception escape into ctypes (which would
        swallow it, and with it a Ctrl-C or a signal): it is kept, polling stops (a negative return
        ends ``ring_buffer_poll``), and :meth:`poll` raises it."""
        if self._stop:
            return -1
        try:
            event = self._records.decode(data)
            if self.keep_events != 0:
                if self.events.maxlen is not None and len(self.events) == self.events.maxlen:
                    self.dropped_by_user_queue += 1
                self.events.append(event)
            if self.on_event is not None:
                self.on_event(event)
        except BaseException as exc:  # KeyboardInterrupt and signal-raised exceptions included
            self._callback_error = exc
            self._stop = True
            return -1
        return 0

    def stop(self) -> None:
        """Stop delivering events (callable from ``on_event``); ``run`` returns at the next check."""
        self._stop = True

    @property
    def stopped(self) -> bool:
        return self._stop

    def _raise_callback_error(self) -> None:
        error, self._callback_error = self._callback_error, None
        if error is not None:
            self._stop = False
            raise error

    def _on_perf_lost(self, count: int) -> None:
        # Already counted per probe in `stats` when perf_submit failed; kept for diagnostics.
        self.perf_lost += count

    def poll(self, timeout: float = 0.1) -> None:
        """Deliver pending events; notice the target's exit."""
        program = self._program
        if program is None:
            return
        self._observe_stack_owners()
        if self.spec.events and not self._stop:
            program.poll(int(timeout * 1000))
            self._raise_callback_error()
        else:
            self._wait_target(timeout)
        if self._pidfd is not None and not self.target_exited:
            ready, _, _ = select.select([self._pidfd], [], [], 0)
            if ready:
                self.target_exited = True
                self.drain()

    def _wait_target(self, timeout: float) -> None:
        if self._pidfd is not None:
            select.select([self._pidfd], [], [], timeout)
        else:
            time.sleep(timeout)

    @contextlib.contextmanager
    def interrupts_deferred(self) -> Iterator[None]:
        """Turn Ctrl-C into :meth:`stop` while events are polled, and raise it once polling returned.

        A signal handler that raises runs wherever the interpreter is, which during polling is inside
        bcc's ctypes callback, where ctypes would swallow the exception.  Here the handler only sets a
        flag (the callback then ends the poll) and ``KeyboardInterrupt`` is raised in the caller.
        """
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield
            return
        interrupted = []

        def on_interrupt(signum: int, frame: object) -> None:
            interrupted.append(signum)
            self._stop = True

        previous = signal.signal(signal.SIGINT, on_interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
        if interrupted:
            self._stop = False
            raise KeyboardInterrupt

    def run(self, duration: Optional[float] = None, until: Optional[Callable[[], bool]] = None,
            interval: float = 0.1) -> None:
        """Collect until ``duration`` seconds pass, ``until()`` is true, :meth:`stop` is called, or the
        target exits.  Ctrl-C raises ``KeyboardInterrupt`` here, with everything collected so far kept."""
        deadline = None if duration is None else time.monotonic() + duration
        with self.interrupts_deferred():
            while self._program is not None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self.poll(interval if remaining is None else min(interval, max(remaining, 0.0)))
                if self.target_exited or self._stop or (until is not None and until()):
                    break
            self.drain()

    def stream(self, duration: Optional[float] = None, interval: float = 0.1) -> Iterator[Event]:
        """Yield events as they arrive, until ``duration`` passes or the target exits.

        Events yielded here are not kept in :attr:`events`.
        """
        if not self.spec.events:
            raise UsageError("this trace collects no events (events=False)")
        deadline = None if duration is None else time.monotonic() + duration
        while self._program is not None:
            while self.events:
                yield self.events.popleft()
            remaining = None if deadline is None else deadline - time.monotonic()
            if (remaining is not None and remaining <= 0) or self.target_exited or self._stop:
                break
            with self.interrupts_deferred():
                self.poll(interval if remaining is None else min(interval, remaining))
        with self.interrupts_deferred():
            self.drain()
        while self.events:
            yield self.events.popleft()

    def __iter__(self) -> Iterator[Event]:
        return self.stream()

    def drain(self) -> None:
        """Deliver every event already in the ring buffer (unless :meth:`stop` was called)."""
        if self._program is not None and self.spec.events and not self._stop:
            self._program.poll(0)
            self._raise_callback_error()

    # ------------------------------------------------------------------ results
    def _snapshot(self, program: Program) -> Dict[str, object]:
        try:
            return {"stats": self._reader.stats(program), "counts": self._reader.counts(program),
                    "hist": self._reader.histograms(program)}
        except Exception:  # reading results must never prevent the detach
            return {}

    def _observe_stack_owners(self) -> None:
        if self._program is not None:
            self._reader.observe_stack_owners(self._program)

    def _current(self, name: str) -> object:
        if self._program is not None:
            reader = {"stats": self._reader.stats, "counts": self._reader.counts,
                      "hist": self._reader.histograms}[name]
            return reader(self._program)
        return getattr(self, "_final", {}).get(name)

    def stats(self) -> Dict[str, ProbeStats]:
        """Per-probe kernel counters (hits, lost events, lost keys, read errors)."""
        return self._current("stats") or {}

    def counts(self) -> Optional[Counts]:
        return self._current("counts")

    def histograms(self) -> Dict[object, Histogram]:
        """Histograms by probe label, or by ``(label, value)`` when split with ``HistSpec(by=...)``."""
        return self._current("hist") or {}

    @property
    def attached(self) -> bool:
        return self._program is not None
