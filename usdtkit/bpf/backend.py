"""The bcc backend: the only module of usdtkit that imports bcc.

It compiles generated BPF C (with kernel headers from :mod:`.kernel_headers`), loads programs, attaches
them to uprobe perf events (:mod:`.perf_uprobe`, not bcc's attach functions: those cannot pass the
semaphore's ``ref_ctr_offset`` and leave tracefs entries behind), and gives read access to maps and the
ring buffer.  Everything above speaks usdtkit types, so another backend (libbpf CO-RE) can replace
this one without touching discovery or collectors.
"""
from __future__ import annotations

import atexit
import contextlib
import io
import os
import sys
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional

from ..errors import AttachError, EnvironmentProblem
from . import capabilities, kernel_headers, perf_uprobe, uprobe_multi


def import_bcc() -> Any:
    """Import bcc or raise :class:`EnvironmentProblem` with the fix."""
    try:
        import bcc
    except Exception as exc:
        raise EnvironmentProblem(
            f"cannot import bcc ({exc}); install python3-bpfcc and use a Python that sees it"
        ) from None
    return bcc


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[io.StringIO]:
    """Capture what libbcc and clang print on fd 2, so a failure is reported in one line."""
    captured = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.write(tmp.read().decode(errors="replace"))


def _first_error(output: str, fallback: str) -> str:
    """The first ``error:`` line of a compiler's output, else its last line, else ``fallback``.

    Clang's ``FILE:LINE:COL: error: MESSAGE`` becomes ``MESSAGE (at FILE:LINE:COL)``; libbcc's own
    lines (``could not open bpf map: NAME, error: REASON``) are sentences and stay whole."""
    lines = output.strip().splitlines()
    for line in lines:
        if "error:" in line:
            where, _, message = line.partition("error:")
            if not where.rstrip().endswith(":"):
                return line.strip()
            return f"{message.strip()} (at {where.strip().rstrip(':')})"
    return lines[-1] if lines else fallback


class Program:
    """A compiled BPF module, its attached uprobe events, and access to its maps.

    Use as a context manager or call :meth:`close`; closing detaches every event (the kernel removes
    the uprobes and their semaphore counts) and releases the programs and maps.
    """

    def __init__(self, text: str, cflags: Optional[List[str]] = None) -> None:
        bcc = import_bcc()
        try:
            headers = kernel_headers.locate()
        except kernel_headers.HeadersNotFound as exc:
            raise EnvironmentProblem(str(exc)) from None
        self._events: List[int] = []
        self._ring_buffers_open = False
        failure: Optional[Exception] = None
        with kernel_headers.bcc_environment(headers), _quiet_stderr() as err:
            try:
                self._bpf = bcc.BPF(text=text.encode(), cflags=list(cflags or []))
            except Exception as exc:  # bcc raises bare Exceptions; clang explains on stderr
                failure = exc
        if failure is not None:
            detail = _first_error(err.getvalue(), str(failure))
            if os.geteuid() != 0 and "not permitted" in (str(failure) + detail):
                raise EnvironmentProblem(f"not allowed to load BPF programs: {detail}")
            raise AttachError(f"BPF compilation or load failed: {detail}")
        self._fds: Dict[str, int] = {}
        self._multi = True
        self.links = 0  # uprobe_multi links made (the rest of the attachments are perf events)

    def program_fd(self, function: str, multi: bool = False) -> int:
        """Load (once) the BPF function ``function`` as a uprobe program and return its fd; ``multi``
        loads it for uprobe_multi links."""
        fd = self._fds.get(function)
        if fd is None:
            bcc = import_bcc()
            attach_type = uprobe_multi.BPF_TRACE_UPROBE_MULTI if multi else -1
            failure: Optional[Exception] = None
            with _quiet_stderr() as err:
                try:
                    fd = self._bpf.load_func(function.encode(), bcc.BPF.KPROBE, attach_type=attach_type).fd
                except Exception as exc:
                    failure = exc
            if failure is not None:
                lines = [line for line in err.getvalue().splitlines() if line.strip()]
                detail = "; ".join(lines[-3:]) or str(failure)
                raise AttachError(f"the kernel refused program {function}: {detail}")
            self._fds[function] = fd
        return fd

    def _unload(self, function: str) -> None:
        fn = self._bpf.funcs.pop(function.encode(), None)
        if fn is not None:
            os.close(fn.fd)
        self._fds.pop(function, None)

    def attach_uprobes(self, function: str, path: str, offsets: List[int], ref_ctr_offsets: List[int],
                       pid: int = -1, retprobe: bool = False) -> None:
        """Attach ``function`` at every offset of ``path``: one uprobe_multi link where the kernel has
        them (fast to attach and to detach), else one perf event per site."""
        if self._multi and capabilities.detect().has_uprobe_multi:
            prog_fd = self.program_fd(function, multi=True)
            try:
                self._events.append(uprobe_multi.attach(prog_fd, path, offsets, ref_ctr_offsets, pid, retprobe))
                self.links += 1
                return
            except uprobe_multi.Unsupported:
                self._multi = False  # an older kernel: perf events from now on
                self._unload(function)
        for offset, ref_ctr in zip(offsets, ref_ctr_offsets):
            self.attach_uprobe(function, path, offset, pid, retprobe, ref_ctr)

    def attach_uprobe(self, function: str, path: str, offset: int, pid: int = -1,
                      retprobe: bool = False, ref_ctr_offset: int = 0) -> int:
        """Attach ``function`` at ``path``+``offset``; returns the perf event fd (owned here)."""
        prog_fd = self.program_fd(function)
        event_fd = perf_uprobe.open_uprobe(path, offset, pid, retprobe, ref_ctr_offset)
        self._events.append(event_fd)
        perf_uprobe.attach_program(event_fd, prog_fd)
        return event_fd

    def stack(self, stack_id: int) -> List[int]:
        """Addresses of a stack recorded in the ``stacks`` map, innermost first."""
        if stack_id < 0:
            return []
        try:
            return [addr for addr in self._bpf[b"stacks"].walk(stack_id) if addr]
        except Exception:
            return []

    def table(self, name: str) -> Any:
        return self._bpf.get_table(name.encode())

    def open_ring_buffer(self, name: str, callback: Callable[[Any, int, int], int]) -> None:
        """Deliver the records of ring buffer ``name`` to ``callback(ctx, address, size)``.

        The callback is registered with libbcc directly, without bcc's Python wrapper around it: one
        Python frame less per record, and its return value (negative: stop polling) goes through."""
        from bcc.libbcc import _RINGBUF_CB_TYPE

        table = self._bpf[name.encode()]
        self._ring_callback = _RINGBUF_CB_TYPE(callback)  # kept alive as long as the program
        self._bpf._open_ring_buffer(table.map_fd, self._ring_callback, None)
        self._ring_buffers_open = True

    def open_perf_buffer(self, name: str, callback: Callable, lost: Callable, pages: int = 64) -> None:
        self._bpf[name.encode()].open_perf_buffer(callback, page_cnt=pages, lost_cb=lost)

    def poll(self, timeout_ms: int) -> None:
        """Deliver pending ring/perf buffer records to their callbacks, waiting up to ``timeout_ms``."""
        if self._ring_buffers_open:
            self._bpf.ring_buffer_poll(timeout_ms)
        else:
            self._bpf.perf_buffer_poll(timeout_ms)

    def detach_all(self) -> None:
        """Close every uprobe link and event; the kernel removes the breakpoints and semaphore counts."""
        while self._events:
            perf_uprobe.close_event(self._events.pop())

    def close(self) -> None:
        self.detach_all()
        bpf, self._bpf = getattr(self, "_bpf", None), None
        if bpf is not None:
            with contextlib.suppress(Exception):
                bpf.cleanup()
            atexit.unregister(bpf.cleanup)  # bcc registers it; drop the reference it keeps
        self._fds.clear()

    def __enter__(self) -> "Program":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
