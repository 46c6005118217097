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
import ctypes
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
from ..errors import AttachError, EnvironmentProblem, NoSuchProcess, UsageError
from . import site_cost
from .resolve import Site
from .launch import GatedCommand
from .semaphores import SemaphoreWriter
from .spec import COMM_LEN, Field, TraceSpec

EventCallback = Callable[[Event], None]


def probe_labels(spec: TraceSpec) -> List[str]:
    """One distinct name per probe for results.  In a function latency trace the return side, where
    times are taken, is named after the function and the entry side ``func:entry``; probes that would
    share a name get their binary's name appended."""
    labels = [p.label for p in spec.probes]
    if spec.function_latency:
        for i, probe in enumerate(spec.probes):
            labels[i] = probe.ref.name if probe.ref.is_return else f"{probe.ref.name}:entry"
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            labels = [f"{lab} [{os.path.basename(spec.probes[j].binary)}]" if lab == label else lab
                      for j, lab in enumerate(labels)]
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            labels[i] = f"{label} #{i}"
    return labels


def _power_of_two(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def _signed(value: int, size: int = 8) -> int:
    bits = size * 8
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


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
        self._nargs = max([p.arg_count for p in spec.probes] + [1])
        self._records: Optional[RecordDecoder] = None
        self._signs = [self._probe_signs(i) for i in range(len(spec.probes))]
        self._string_masks = [codegen.string_mask(spec, i) for i in range(len(spec.probes))]
        self.labels = probe_labels(spec)
        if spec.events:
            self._records = RecordDecoder(
                [self._probe_decoder(i) for i in range(len(spec.probes))], self._nargs, len(spec.event_strings),
                spec.string_size, self._event_stack if spec.stacks else None)
        self._program: Optional[Program] = None
        self._pidfd: Optional[int] = None
        self.target_exited = False
        self.attach_seconds = 0.0
        self.warnings: List[str] = self._site_warnings()
        self._symbolizer = Symbolizer()
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
        signed = [sign for sign, _ in self._signs[index]]
        has_latency = self.spec.function_latency or self.spec.pair is not None
        return ProbeDecoder(self.labels[index], probe.arg_count, signed, slots, probe.ref.is_return, has_latency)

    def _event_stack(self, stack_id: int, pid: int) -> Optional[Tuple[str, ...]]:
        if self._program is None:
            return None
        self._symbolizer.observe(pid)
        return self._frames(self._program, stack_id, pid)

    def _probe_signs(self, index: int) -> List[Tuple[bool, int]]:
        probe = self.spec.probes[index]
        out = []
        for i in range(probe.arg_count):
            args = [s.args[i] for s in probe.sites if i < len(s.args)]
            out.append((bool(args) and all(a.signed for a in args), args[0].size if args else 8))
        return out

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
        except BaseException:
            self.close()
            raise
        self.attach_seconds = time.monotonic() - started
        if self.command is not None:
            self.command.release()
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
            return {"stats": self._read_stats(program), "counts": self._read_counts(program),
                    "hist": self._read_hist(program)}
        except Exception:  # reading results must never prevent the detach
            return {}

    def _read_stats(self, program: Program) -> Dict[str, ProbeStats]:
        table = program.table("stats")
        totals = [0] * (len(self.spec.probes) * codegen.STATS_PER_PROBE)
        for key, per_cpu in table.items():
            totals[key.value] = sum(per_cpu)
        out: Dict[str, ProbeStats] = {}
        for i, probe in enumerate(self.spec.probes):
            base = i * codegen.STATS_PER_PROBE
            stats = ProbeStats(*totals[base:base + codegen.STATS_PER_PROBE])
            previous = out.get(self.labels[i])
            if previous is not None:  # two probes with one label (uprobe+uretprobe): add them up
                stats = ProbeStats(*(a + b for a, b in zip(previous.to_json().values(), stats.to_json().values())))
            out[self.labels[i]] = stats
        return out

    def _read_counts(self, program: Program) -> Optional[Counts]:
        if self.spec.count_by is None:
            return None
        fields = tuple(str(f) for f in self.spec.count_by)
        items: Dict[Tuple, int] = {}
        if not self.spec.count_by:  # counts by probe only: the in-kernel hit counters
            for label, stats in self._read_stats(program).items():
                if stats.hits:
                    items[(label,)] = stats.hits
            return Counts(fields, items)
        for key, value in program.table("counts").items():
            probe = self.spec.probes[key.probe]
            row: List[object] = [self.labels[key.probe]]
            for fld in self.spec.count_by:
                row.append(self._key_value(program, key, fld))
            items[tuple(row)] = items.get(tuple(row), 0) + int(value.value)
        return Counts(fields, items)

    def _key_value(self, program: Program, key: ctypes.Structure, fld: Field) -> object:
        """A map key member as a Python value (strings decoded, signed arguments signed)."""
        raw = getattr(key, f"k_{fld.key_name}")
        if fld.name in ("comm", "str"):
            return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")
        if fld.name == "ustack":
            return self._folded(program, _signed(raw), self._key_pid(key))
        signs = self._signs[key.probe]
        if fld.name == "arg" and fld.index < len(signs) and signs[fld.index][0]:
            return _signed(raw)
        return int(raw)

    def _key_pid(self, key: ctypes.Structure) -> int:
        if self.spec.pid is not None:
            return self.spec.pid
        return int(getattr(key, "k_pid", -1))

    def _frames(self, program: Program, stack_id: int, pid: int, detail: bool = True) -> Tuple[str, ...]:
        return tuple(self._symbolizer.symbolize(pid, address, detail) for address in program.stack(stack_id))

    def _observe_stack_owners(self) -> None:
        """Snapshot the mappings of traced processes while they live, to name their stacks later."""
        program = self._program
        if program is None or not self.spec.needs_stacks:
            return
        if self.spec.pid is not None:
            self._symbolizer.observe(self.spec.pid)
        elif self.spec.count_by and any(f.name == "ustack" for f in self.spec.count_by):
            for key in program.table("counts").keys():
                pid = int(getattr(key, "k_pid", 0))
                if pid and not self._symbolizer.knows(pid):
                    self._symbolizer.observe(pid)

    def _folded(self, program: Program, stack_id: int, pid: int) -> str:
        """Root-first frames joined by ``;``: the folded format flame graph tools read."""
        if stack_id < 0:
            return "[no stack]"
        frames = self._frames(program, stack_id, pid, detail=False)
        return ";".join(reversed(frames)) or "[empty stack]"

    def _read_hist(self, program: Program) -> Optional[Dict[str, Histogram]]:
        hist = self.spec.hist
        if hist is None:
            return None
        unit = "ns" if hist.field.name == "latency" else ""
        out: Dict[str, Histogram] = {}
        for key, value in program.table("hist").items():
            label = self.labels[key.probe]
            if hist.by is not None:
                label = (label, self._key_value(program, key, hist.by))
            h = out.setdefault(label, Histogram(hist.kind, {}, hist.low, hist.high, hist.step, unit))
            h.buckets[key.slot] = h.buckets.get(key.slot, 0) + int(value.value)
        return out

    def _current(self, name: str) -> object:
        if self._program is not None:
            reader = {"stats": self._read_stats, "counts": self._read_counts, "hist": self._read_hist}[name]
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

    def require_attached(self) -> None:
        if self._program is None:
            raise AttachError("the session is not attached")
