"""The keeper: a small process that owns a command started under trace, and everything it starts.

:class:`usdtkit.tracing.launch.GatedCommand` runs it as a fresh interpreter (``python -I -S``, so it
holds none of the tracer's threads, locks or file descriptors).  The keeper:

* forks the command, which joins the tracer's process group (a terminal treats it as before: it may
  read the terminal and gets Ctrl-C), asks for SIGKILL when the keeper dies, and blocks reading a gate
  pipe until the tracer says ``go``, then becomes the command with ``exec`` (its PID and argv are its own;
  it inherits one more fd when the tracer asks, a rendezvous of :mod:`.rendezvous`, which the keeper
  does not keep);
* is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): a descendant whose parent exits is reparented to
  the keeper, not to init, so even a daemon that double-forks and calls ``setsid`` stays in its reach;
* keeps the command's zombie until the end, so the command's PID cannot be reused while the tracer may
  still signal it; other children are reaped as they exit;
* stops the whole tree when the tracer says ``stop``, closes the control pipe, or dies (its pidfd
  becomes readable, whichever thread created the session and however the tracer died).

Stopping signals only the keeper's own unreaped children (their PIDs cannot have been reused): SIGTERM
to each as it becomes a child, for a grace period, then SIGKILL until none is left.  Killing a parent
hands its children to the keeper, so the tree is taken down level by level.

Protocol, one word per line.  Control pipe (tracer to keeper): ``go``, ``stop``.  Status pipe (keeper
to tracer): ``pid N``, ``released``, ``exit CODE`` (negative: killed by that signal), ``error TEXT``.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time

# No typing import (annotations stay strings): the keeper's start delays every traced command.

GRACE_SECONDS = 3.0
"""How long the tree has to exit after SIGTERM before it gets SIGKILL."""

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved now: the forked command must not dlopen


def children(pid: int) -> list[int]:
    """PIDs of the direct children of single-threaded process ``pid`` (zombies included)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: read every parent link
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as handle:
                        parent = int(handle.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if parent == pid:
                    found.append(int(entry))
        return found


def status_of(info: "os.waitid_result") -> int:
    """``waitid`` status as an exit code: the status, or minus the signal that killed the process."""
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


class Keeper:
    """Start one command gated, then keep it and its descendants until told (or left) to stop."""

    def __init__(self, control: int, status: int, tracer: int, stdout: int, inherited: int, group: int,
                 executable: str, argv: list[str]) -> None:
        self.control, self.status, self.tracer = control, status, tracer
        self.stdout, self.inherited, self.group = stdout, inherited, group
        self.executable, self.argv = executable, argv
        self.pid = 0
        self.gate: int | None = None
        self.exit_code: int | None = None
        self.stopping = False
        self._control_buffer = b""
        self._wake_read, self._wake_write = os.pipe()

    # ------------------------------------------------------------------ setup
    def start(self) -> None:
        for fd in (self.control, self.status, self.tracer, self.stdout):
            if fd > 2:
                os.set_inheritable(fd, False)  # the command gets none of them
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        os.setpgid(0, 0)  # a signal to the tracer's process group (Ctrl-C, a killed job) spares the keeper
        _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        inherited = {sig: signal.SIG_IGN if signal.getsignal(sig) == signal.SIG_IGN else signal.SIG_DFL
                     for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
        for sig in inherited:
            signal.signal(sig, signal.SIG_IGN)  # the keeper outlives the tracer's Ctrl-C and hang-up
        signal.signal(signal.SIGTERM, self._on_terminate)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # not the mask of the thread that started us
        restore = {**inherited, **{sig: signal.SIG_DFL for sig in (
            signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ)}}
        gate_read, self.gate = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self._become_command(gate_read, restore)
            finally:
                os._exit(127)
        os.close(gate_read)
        if self.inherited >= 0:
            os.close(self.inherited)  # the command's: the keeper has no use for it
        try:
            os.setpgid(self.pid, self.group)  # here too, so the group is set before the tracer hears the PID
        except OSError:
            pass
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the command has them; holding them would delay its readers' EOF
            os.dup2(devnull, fd)
        os.close(devnull)
        if self.stdout > 2:
            os.close(self.stdout)
        self._send(f"pid {self.pid}")

    def _become_command(self, gate_read: int, restore: dict[int, object]) -> None:
        """In the forked child: only system calls until ``exec``."""
        keeper = os.getppid()
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != keeper:  # the keeper died before the line above
            return
        signal.set_wakeup_fd(-1)
        for sig, action in restore.items():
            signal.signal(sig, action)  # type: ignore[arg-type]
        try:
            os.setpgid(0, self.group)
        except OSError:  # the tracer's group is gone: the keeper stops everything anyway
            pass
        os.close(self.gate)  # type: ignore[arg-type]
        if self.stdout >= 0:
            os.dup2(self.stdout, 1)
        if os.read(gate_read, 1):  # a byte: go; EOF: the tracer gave up
            os.close(gate_read)
            os.execv(self.executable, self.argv)

    def _on_terminate(self, signum: int, frame: object) -> None:
        self.stopping = True

    # ------------------------------------------------------------------ while the session lasts
    def run(self) -> None:
        """Serve the tracer until it says stop or is gone, then stop the tree."""
        watched = [self.control, self._wake_read] + ([self.tracer] if self.tracer >= 0 else [])
        while not self.stopping:
            ready, _, _ = select.select(watched, [], [])
            if self._wake_read in ready:
                self._drain_wake()
                self._collect()
            if self.tracer in ready:
                self.stopping = True
            if self.control in ready and not self.stopping:
                self._read_control()
        self.stop_tree()

    def _read_control(self) -> None:
        data = os.read(self.control, 256)
        if not data:
            self.stopping = True
            return
        self._control_buffer += data
        while b"\n" in self._control_buffer:
            line, self._control_buffer = self._control_buffer.split(b"\n", 1)
            if line == b"go":
                self._release()
            elif line == b"stop":
                self.stopping = True

    def _release(self) -> None:
        """Open the gate, or leave the ``exit`` already reported as the answer."""
        if self.gate is None:
            return
        self._collect()
        released = False
        if self.exit_code is None:
            try:
                os.write(self.gate, b"\n")
                released = True
            except BrokenPipeError:  # it is exiting: wait until its status can be told
                self._report_exit(status_of(os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)))
        os.close(self.gate)
        self.gate = None
        if released:
            self._send("released")

    def _collect(self) -> None:
        """Report the command's exit (keeping its zombie) and reap every other child that exited."""
        if self.exit_code is None:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                self._report_exit(status_of(info))
        for child in children(os.getpid()):
            if child != self.pid:
                try:
                    os.waitpid(child, os.WNOHANG)
                except ChildProcessError:
                    pass

    # ------------------------------------------------------------------ the end
    def stop_tree(self) -> None:
        """SIGTERM every process of the tree, SIGKILL what is left after the grace period, reap all."""
        if self.gate is not None:
            os.close(self.gate)  # a command still gated exits without running
            self.gate = None
        deadline = time.monotonic() + GRACE_SECONDS
        terminated: set[int] = set()
        while self._reap_exited():
            kill = time.monotonic() >= deadline
            for child in children(os.getpid()):
                if kill or child not in terminated:
                    try:
                        os.kill(child, signal.SIGKILL if kill else signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                    terminated.add(child)
            select.select([self._wake_read], [], [], 0.05)
            self._drain_wake()

    def _reap_exited(self) -> bool:
        """Reap every exited child, the command included (its status reported first).  False once the
        keeper has no child left."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return False
            if info is None:
                return True
            if info.si_pid == self.pid:
                self._report_exit(status_of(info))
            os.waitpid(info.si_pid, 0)

    # ------------------------------------------------------------------ helpers
    def _report_exit(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
            self._send(f"exit {code}")

    def _send(self, line: str) -> None:
        try:
            os.write(self.status, f"{line}\n".encode())
        except BrokenPipeError:  # the tracer is gone: the tree is being stopped anyway
            pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_read, 512):
                pass
        except BlockingIOError:
            pass


def main(args: list[str]) -> int:
    """``CONTROL STATUS TRACER_PIDFD STDOUT INHERITED GROUP EXECUTABLE ARGV0 [ARG...]`` (fds: -1 for none;
    INHERITED: one more fd the command inherits at its number, such as a rendezvous)."""
    control, status, tracer, stdout, inherited, group = (int(value) for value in args[:6])
    keeper = Keeper(control, status, tracer, stdout, inherited, group, args[6], args[7:])
    try:
        keeper.start()
    except OSError as exc:
        keeper._send(f"error {exc.strerror or exc}")
        return 1
    keeper.run()
    return 0


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))  # nothing to flush or finalise: its stdio is /dev/null by now
