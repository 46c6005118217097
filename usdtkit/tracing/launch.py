"""Start a command that waits until the tracer is attached (``usdtkit trace -c CMD``).

The command's standard output goes where the caller says (the CLI sends it to stderr, so the
tracer's own stdout stays machine-readable).  The child is forked at once, so its PID is known and probes can be attached with a PID filter, but it
blocks reading a pipe before ``exec`` (no shell in between: the PID and argv are the command's own;
``subprocess`` cannot do this, as ``Popen`` waits for the exec).  :meth:`GatedCommand.release` closes the pipe after attaching,
and the command runs from its first instruction with every probe in place.  The PID survives
``exec``, and the kernel arms uprobes (and semaphore counts) in mappings created after attach.
The command is killed if the tracer dies (``PR_SET_PDEATHSIG``), so nothing outlives a killed tracer.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from typing import IO, List, Optional

from ..errors import TargetError, UsageError


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child must not dlopen


def describe_exit(code: int) -> str:
    """``status 3`` or ``killed by SIGKILL``."""
    if code >= 0:
        return f"status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def die_with_parent() -> None:
    """In a child before exec: get SIGKILL when the tracer dies, however it dies."""
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


class ChildProcess:
    """The started command: a small ``subprocess.Popen``-like handle (pid, stdout, poll, wait, signals)."""

    def __init__(self, pid: int, stdout: Optional[IO[bytes]]) -> None:
        self.pid = pid
        self.stdout = stdout
        self.stdin = None
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.01)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class GatedCommand:
    def __init__(self, argv: List[str], stdout: Optional[int] = None) -> None:
        """Fork ``argv`` blocked before exec.  ``stdout``: an fd to write to, ``subprocess.PIPE`` for a
        readable pipe (``process.stdout``), or None to inherit."""
        if not argv:
            raise UsageError("empty command")
        executable = shutil.which(argv[0])
        if executable is None:
            raise TargetError(f"{argv[0]}: command not found")
        self.name = argv[0]
        self.executable = os.path.realpath(executable)
        gate_read, self._gate = os.pipe()
        out_read = out_write = None
        if stdout == subprocess.PIPE:
            out_read, out_write = os.pipe()
        target_fd = out_write if out_write is not None else stdout
        pid = os.fork()
        if pid == 0:  # the child: only system calls until exec
            try:
                die_with_parent()
                os.close(self._gate)
                if target_fd is not None:
                    os.dup2(target_fd, 1)
                if os.read(gate_read, 1):  # a byte: go; EOF: the tracer gave up
                    os.close(gate_read)
                    os.execv(executable, [argv[0], *argv[1:]])
            finally:
                os._exit(127)
        os.close(gate_read)
        if out_write is not None:
            os.close(out_write)
        self.process = ChildProcess(pid, os.fdopen(out_read, "rb") if out_read is not None else None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        """Let the command run (idempotent).  Raises :class:`TargetError` if it exited before."""
        if self._gate is None:
            return
        gate, self._gate = self._gate, None
        try:
            os.write(gate, b"\n")
        except BrokenPipeError:  # its end of the gate is closed: it has exited or is exiting
            code = self.process.wait()
            raise TargetError(f"command {self.name} exited ({describe_exit(code)}) before tracing started") from None
        finally:
            os.close(gate)

    def wait(self, timeout: Optional[float] = None) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Release (if needed), terminate and reap the command."""
        if self._gate is not None:
            os.close(self._gate)
            self._gate = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
