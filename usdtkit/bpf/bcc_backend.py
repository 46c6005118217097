"""The bcc backend (:class:`BccBackend`): the only module of usdtkit that imports bcc.

It compiles a layout's C text (with kernel headers from :mod:`.kernel_headers`), loads programs, attaches
them to uprobe_multi links or uprobe perf events (:mod:`.uprobe_multi`, :mod:`.perf_uprobe`, not bcc's
attach functions: those cannot pass the semaphore's ``ref_ctr_offset`` and leave tracefs entries
behind), and serves maps and the ring buffer as bytes through the interface of :mod:`.backend`.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import io
import os
import sys
import tempfile
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import AttachError, EnvironmentProblem
from . import kernel_headers, uprobe_multi
from .attaching import Attaching
from .backend import RecordCallback
from .layout import WAKE_MAP, ProgramLayout
from .ringbuf import NativeDrain, RingBuffer


def import_bcc() -> Any:
    """Import bcc or raise :class:`EnvironmentProblem` with the fix."""
    try:
        import bcc
    except Exception as exc:
        raise EnvironmentProblem(
            f"cannot import bcc ({exc}); install python3-bpfcc and use a Python that sees it"
        ) from None
    return bcc


_STDERR_LOCK = threading.Lock()  # fd 2 is the process's: two threads compiling at once would swap it twice


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[io.StringIO]:
    """Capture what libbcc and clang print on fd 2, so a failure is reported in one line."""
    captured = io.StringIO()
    with _STDERR_LOCK, tempfile.TemporaryFile(mode="w+b") as tmp:
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


class BccBackend:
    """Compiles and loads layouts with bcc."""

    name = "bcc"

    def load(self, layout: ProgramLayout) -> "Program":
        program = Program(layout.text, layout=layout)
        try:
            _check_layout(program, layout)
        except BaseException:
            program.close()
            raise
        return program


def _check_layout(program: "Program", layout: ProgramLayout) -> None:
    """The key structs as clang laid them out must be the ones the layout decodes (a mismatch is a bug
    in usdtkit, caught here rather than read as wrong numbers)."""
    for name, spec in layout.maps.items():
        if spec.key is None:
            continue
        compiled = ctypes.sizeof(program.table(name).Key)
        if compiled != spec.key.size:
            raise AttachError(f"internal error: map {name} has {compiled}-byte keys, the layout says "
                              f"{spec.key.size}")


class Program(Attaching):
    """A compiled BPF module, its attached uprobe events, and access to its maps.

    Use as a context manager or call :meth:`close`; closing detaches every event (the kernel removes
    the uprobes and their semaphore counts) and releases the programs and maps.
    """

    def __init__(self, text: str, cflags: Optional[List[str]] = None, layout: Optional[ProgramLayout] = None) -> None:
        self.layout = layout  # type: ignore[assignment]
        bcc = import_bcc()
        try:
            headers = kernel_headers.locate()
        except kernel_headers.HeadersNotFound as exc:
            raise EnvironmentProblem(str(exc)) from None
        self._init_attaching()
        self._ring: Optional[RingBuffer] = None
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

    @property
    def module(self) -> int:
        """libbcc's ``bpf_module`` pointer of this program (what :func:`.objcache.capture` reads)."""
        return int(self._bpf.module)

    def program_fd(self, function: str, multi: bool = False, tracepoint: bool = False) -> int:
        """Load (once) the BPF function ``function`` as a uprobe program and return its fd; ``multi``
        loads it for uprobe_multi links, ``tracepoint`` as a tracepoint program."""
        fd = self._fds.get(function)
        if fd is None:
            bcc = import_bcc()
            attach_type = uprobe_multi.BPF_TRACE_UPROBE_MULTI if multi else -1
            kind = bcc.BPF.TRACEPOINT if tracepoint else bcc.BPF.KPROBE
            failure: Optional[Exception] = None
            with _quiet_stderr() as err:
                try:
                    fd = self._bpf.load_func(function.encode(), kind, attach_type=attach_type).fd
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

    def stack(self, stack_id: int) -> List[int]:
        """Addresses of a stack recorded in the ``stacks`` map, innermost first."""
        if stack_id < 0:
            return []
        try:
            return [addr for addr in self._bpf[b"stacks"].walk(stack_id) if addr]
        except Exception:
            return []

    def run_stats(self) -> Tuple[int, int]:
        """``(run_time_ns, run_cnt)`` of this module's loaded programs (counted while run-time stats are
        on: see :mod:`.prog_stats`)."""
        from .prog_stats import run_stats

        return run_stats(self._fds.values())

    def table(self, name: str) -> Any:
        return self._bpf.get_table(name.encode())

    def set_config(self, index: int, value: int) -> None:
        self.set_map("config", index, value)

    def set_map(self, name: str, index: int, value: int) -> None:
        """Set slot ``index`` of array map ``name``."""
        table = self.table(name)
        table[table.Key(index)] = table.Leaf(value)

    def update_map(self, name: str, key: bytes, value: int) -> None:
        """Set ``key`` (bytes as :meth:`read_map` gives them) to ``value``."""
        table = self.table(name)
        table[table.Key.from_buffer_copy(key)] = table.Leaf(value)

    def read_map(self, name: str) -> List[Tuple[bytes, int]]:
        """Every entry as (key bytes, value); per-CPU values summed."""
        table = self.table(name)
        out = []
        for key, value in table.items():
            total = int(value.value) if hasattr(value, "value") else sum(int(v) for v in value)
            out.append((bytes(key), total))
        return out

    def delete_keys(self, name: str, keys: Sequence[bytes]) -> int:
        """Delete these keys (as :meth:`read_map` gave them); returns how many were there."""
        table = self.table(name)
        deleted = 0
        for raw in keys:
            try:
                del table[table.Key.from_buffer_copy(raw)]
                deleted += 1
            except (KeyError, ValueError):
                continue  # already gone
        return deleted

    def open_events(self, on_record: RecordCallback, on_lost: Optional[Callable[[int], None]] = None,
                    pages: int = 64, drain: Optional[NativeDrain] = None) -> bool:
        """Deliver the records of the ``events`` map (ring buffer, or perf buffer on old kernels); a
        ring buffer goes to ``drain`` instead when one is given (then True is returned)."""
        if self.layout is not None and not self.layout.ringbuf:
            def perf_record(_cpu: int, data: int, size: int) -> None:
                on_record(ctypes.string_at(data, size))

            self._bpf[b"events"].open_perf_buffer(perf_record, page_cnt=pages, lost_cb=on_lost)
            return False
        wake = None
        if self.layout is not None and WAKE_MAP in self.layout.maps:
            def wake(on: bool) -> None:
                self.set_map(WAKE_MAP, 0, int(on))
        self._ring = RingBuffer(self._bpf[b"events"].map_fd, on_record, wake)
        self._ring.set_drain(drain)
        return drain is not None

    def consume(self, timeout_ms: int, budget_s: float) -> None:
        """Deliver pending records, waiting up to ``timeout_ms`` for the first; return within about
        ``budget_s`` however fast records keep coming."""
        if self._ring is not None:
            self._ring.poll(timeout_ms, budget_s)
        else:
            self._bpf.perf_buffer_poll(timeout_ms)

    def close(self) -> None:
        self.detach_all()
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()
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
