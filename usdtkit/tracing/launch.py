"""Start a command that waits until the tracer is attached (``usdtkit trace -c CMD``, ``trace(command=...)``).

The command is forked at once, so its PID is known and probes can be attached with a PID filter, but it
blocks reading a pipe before ``exec`` (no shell in between: the PID and argv are the command's own;
``subprocess`` cannot do this, as ``Popen`` waits for the exec).  :meth:`GatedCommand.release` opens the
gate after attaching, and the command runs from its first instruction with every probe in place.  The
PID survives ``exec``, and the kernel arms uprobes (and semaphore counts) in mappings created after
attach.  Its standard output goes where the caller says (the CLI sends it to stderr, so the tracer's
own stdout stays machine-readable).  A command whose probes it declares at run time also inherits a
rendezvous (:mod:`.rendezvous`), through which its providers wait for the tracer as they are loaded.

The command lives exactly as long as its session, and so does everything it starts.  That takes a
process of its own, the *keeper* (:mod:`usdtkit.tracing.keeper`), which forks the command and stays
its parent.  Why not less:

* ``PR_SET_PDEATHSIG`` in the command fires when the *thread* that forked it exits, not the process:
  a session set up in a worker thread would lose its command when the worker ends.  Forking from a
  long-lived thread of our own would fix that, but the signal still reaches only the direct child.
* A process group of its own lets ``setsid`` daemons escape, and a group that is not the terminal's
  foreground group can no longer read the terminal nor get its Ctrl-C.
* A cgroup v2 leaf with ``cgroup.kill`` catches everything, but needs a writable, delegated cgroup2
  mount, and after the tracer is killed something alive must still write ``cgroup.kill`` (and remove
  the directory).  A new PID namespace dies with its init, but the command would then see itself as
  PID 1, with init's signal rules, and another PID than the tracer sees.

The keeper is an exec'd interpreter, not a fork of the tracer: it holds none of the tracer's threads,
locks or file descriptors (BPF ones included).  It learns that the tracer died from a pidfd of the
tracer *process*, however it died and whichever thread started the session; it is a child subreaper,
so orphans of the tree (double-forking daemons too) become its children instead of init's; and it
takes the tree down signalling only its own unreaped children, so it never signals a process outside
the tree.  The command itself asks for SIGKILL when the keeper dies (the keeper has one thread, so
here the signal is sound), and joins the tracer's process group, where it was before.  The price is
one interpreter start per command (tens of milliseconds), paid before the probes are compiled.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from typing import IO, Callable, List, Optional, Tuple

from ..errors import TargetError, UsageError
from . import keeper
from .keeper import GRACE_SECONDS
from .rendezvous import Rendezvous

_ANSWER_SECONDS = 30.0  # the keeper answers in milliseconds; this only bounds a wedged machine


def describe_exit(code: int) -> str:
    """``status 3`` or ``killed by SIGKILL``."""
    if code >= 0:
        return f"status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _stdout_target(stdout: Optional[int]) -> Tuple[Optional[int], int, List[int]]:
    """For the ``stdout`` argument: the fd to read the command's output from (PIPE), the fd the command
    writes to (-1: inherit), and the fds to close once the keeper has its copies."""
    if stdout is None:
        return None, -1, []
    if stdout == subprocess.PIPE:
        out_read, out_write = os.pipe()
        return out_read, out_write, [out_write]
    if stdout == subprocess.DEVNULL:
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        return None, devnull, [devnull]
    if isinstance(stdout, int) and not isinstance(stdout, bool) and stdout >= 0:
        return None, stdout, []
    raise UsageError(f"command stdout: {stdout!r} is not a file descriptor, PIPE, DEVNULL or None")


def _pidfd_of_this_process() -> int:
    """A pidfd of the tracer process (not thread): readable once it has exited.  -1 before Linux 5.3,
    where the keeper sees the control pipe close instead."""
    try:
        return os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        return -1


class ChildProcess:
    """The started command: a small ``subprocess.Popen``-like handle (pid, stdout, poll, wait, signals).

    Its parent is the keeper, which reports its exit status; ``refresh(timeout)`` reads those reports.
    """

    def __init__(self, pid: int, stdout: Optional[IO[bytes]], refresh: Callable[[Optional[float]], None]) -> None:
        self.pid = pid
        self.stdout = stdout
        self.stdin = None
        self.returncode: Optional[int] = None
        self._refresh = refresh
        try:
            self._pidfd: Optional[int] = os.pidfd_open(pid)  # the keeper keeps the PID reserved until stop
        except (AttributeError, OSError):
            self._pidfd = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self._refresh(0)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            self._refresh(remaining)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self.stdout is not None:
            self.stdout.close()


class GatedCommand:
    """A command forked gated before ``exec`` by its keeper; released once the probes are attached."""

    def __init__(self, argv: List[str], stdout: Optional[int] = None, rendezvous: Optional[Rendezvous] = None) -> None:
        """Start ``argv`` gated.  ``stdout``: an fd to write to, ``subprocess.PIPE`` for a readable pipe
        (``process.stdout``), ``subprocess.DEVNULL``, or None to inherit.  ``rendezvous``: handed to the
        command (its fd and environment variable), so that providers it loads wait for the tracer."""
        if not argv:
            raise UsageError("empty command")
        executable = shutil.which(argv[0])
        if executable is None:
            raise TargetError(f"{argv[0]}: command not found")
        self.name = argv[0]
        self.executable = os.path.realpath(executable)
        self._released = False
        self._buffer = b""
        out_read, target, spawn_only = _stdout_target(stdout)
        control_read, self._control = os.pipe()
        self._status, status_write = os.pipe()
        tracer = _pidfd_of_this_process()
        spawn_only += [control_read, status_write, tracer]
        inherited = rendezvous.child_fd if rendezvous is not None else -1
        failure = "its keeper did not start"
        try:
            self._keeper: Optional[subprocess.Popen] = subprocess.Popen(
                [sys.executable, "-I", "-S", keeper.__file__,
                 *(str(fd) for fd in (control_read, status_write, tracer, target, inherited)), str(os.getpgrp()),
                 self.executable, *argv],
                pass_fds=[fd for fd in (control_read, status_write, tracer, target, inherited) if fd >= 0],
                env=None if rendezvous is None else {**os.environ, **rendezvous.environment()})
        except OSError as exc:
            self._keeper = None
            failure = f"cannot start its keeper ({sys.executable or 'no Python executable'}): {exc.strerror}"
        finally:
            for fd in spawn_only:
                if fd >= 0:
                    os.close(fd)
            if rendezvous is not None:
                rendezvous.handed_over()
        first = self._receive(_ANSWER_SECONDS) if self._keeper is not None else ""
        if not first.startswith("pid "):
            if self._keeper is not None:
                self._keeper.kill()
            self._end_keeper()
            for fd in (self._control, out_read):
                if fd is not None:
                    os.close(fd)
            raise TargetError(f"{self.name}: {first[len('error '):] if first.startswith('error ') else failure}")
        output = os.fdopen(out_read, "rb") if out_read is not None else None
        self.process = ChildProcess(int(first.split()[1]), output, self._refresh)

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        """Let the command run (idempotent).  Raises :class:`TargetError` if it exited before."""
        if self._released:
            return
        if self._keeper is not None and self.process.poll() is None:
            self._send("go")
            while not self._released and self.process.returncode is None:
                if self._receive(_ANSWER_SECONDS) == "timeout":
                    raise TargetError(f"command {self.name}: its keeper stopped answering before tracing started")
            if self._released:
                return
        if self.process.returncode is None:
            raise TargetError(f"command {self.name} was stopped before tracing started")
        raise TargetError(f"command {self.name} exited ({describe_exit(self.process.returncode)}) "
                          "before tracing started")

    def wait(self, timeout: Optional[float] = None) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Stop the command and everything it started (SIGTERM, a grace period, SIGKILL), and reap them
        (idempotent).  A command still gated exits without running."""
        if self._keeper is None:
            return
        self._send("stop")
        os.close(self._control)
        try:
            self._keeper.wait(timeout=GRACE_SECONDS + _ANSWER_SECONDS)
        except subprocess.TimeoutExpired:  # wedged: its death still takes the command (PDEATHSIG)
            self._keeper.kill()
        self._end_keeper()
        self.process.close()

    # ------------------------------------------------------------------ the pipes to the keeper
    def _end_keeper(self) -> None:
        """Reap the keeper and read what it said last (the command's exit status)."""
        process, self._keeper = self._keeper, None
        if process is not None:
            process.wait()
            while self._receive(0) not in ("", "timeout"):
                pass
        os.close(self._status)
        command = getattr(self, "process", None)
        if command is not None and command.returncode is None:
            command.returncode = -signal.SIGKILL  # the keeper died without a word: the command died with it

    def _send(self, word: str) -> None:
        try:
            os.write(self._control, f"{word}\n".encode())
        except BrokenPipeError:  # the keeper is gone; its status pipe says how
            pass

    def _refresh(self, timeout: Optional[float]) -> None:
        """Apply the keeper's reports, waiting up to ``timeout`` seconds (None: until one arrives)."""
        if self._keeper is not None and self._receive(timeout) not in ("", "timeout"):
            while self._receive(0) not in ("", "timeout"):
                pass

    def _receive(self, timeout: Optional[float]) -> str:
        """The keeper's next line, applied to the state; "timeout", or "" once the keeper is gone."""
        while b"\n" not in self._buffer:
            waiter = select.poll()  # not select(): a tracer holding many perf fds has fd numbers past 1024
            waiter.register(self._status, select.POLLIN)
            if not waiter.poll(None if timeout is None else max(timeout, 0.0) * 1000):
                return "timeout"
            data = os.read(self._status, 256)
            if not data:
                process = getattr(self, "process", None)
                if process is not None and process.returncode is None:
                    process.returncode = -signal.SIGKILL  # the keeper died first: the command died with it
                return ""
            self._buffer += data
        raw, self._buffer = self._buffer.split(b"\n", 1)
        line = raw.decode()
        if line == "released":
            self._released = True
        elif line.startswith("exit ") and getattr(self, "process", None) is not None:
            self.process.returncode = int(line.split()[1])
        return line
