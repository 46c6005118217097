"""Start a command that waits until the tracer is attached (``usdtkit trace -c CMD``).

The command's standard output goes where the caller says (the CLI sends it to stderr, so the
tracer's own stdout stays machine-readable).  The child is forked at once, so its PID is known and probes can be attached with a PID filter, but it
blocks reading a pipe before ``exec``.  :meth:`GatedCommand.release` closes the pipe after attaching,
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
from typing import List, Optional

from ..errors import TargetError, UsageError


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before exec: get SIGKILL when the tracer dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _child_setup(gate_fd: int) -> None:
    die_with_parent()
    os.dup2(gate_fd, 3)


class GatedCommand:
    def __init__(self, argv: List[str], stdout: Optional[int] = None) -> None:
        if not argv:
            raise UsageError("empty command")
        executable = shutil.which(argv[0])
        if executable is None:
            raise TargetError(f"{argv[0]}: command not found")
        self.executable = os.path.realpath(executable)
        read_end, self._gate = os.pipe()
        try:
            self.process = subprocess.Popen(
                ["/bin/sh", "-c", 'read _ <&3; exec 3<&-; exec "$@"', "usdtkit-gate", executable, *argv[1:]],
                pass_fds=(read_end,),
                stdout=stdout,
                preexec_fn=lambda: _child_setup(read_end),
            )
        finally:
            os.close(read_end)

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        """Let the command run (idempotent)."""
        if self._gate is not None:
            try:
                os.write(self._gate, b"\n")
            finally:
                os.close(self._gate)
                self._gate = None

    def wait(self, timeout: Optional[float] = None) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Release (if needed), terminate and reap the command."""
        if self._gate is not None:
            os.close(self._gate)
            self._gate = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
