"""The tracer's end of a rendezvous: how a command started under trace tells the tracer about a runtime
provider it has just loaded, and waits until the tracer has attached to it.

A runtime provider (:mod:`usdtkit.provider`, or any program on usdtkit's ``libstapsdt``) does not exist
when its program starts, so its probes cannot be attached before the program's first instruction as
other probes are.  So the tracer makes a :class:`Rendezvous`, an ``AF_UNIX`` ``SOCK_SEQPACKET`` socket
pair, and the command inherits one end, named in its environment as ``USDTKIT_RENDEZVOUS=FD:INODE``.
Each ``providerLoad()`` in a process holding it (the command, and the workers it forks) sends one
message on it once the object is mapped and before any probe can fire::

    usdtkit-rendezvous 1\\nPROVIDER\\nDEVICE\\nINODE\\nDEADLINE\\nPATH\\n

with one end of a socket pair of its own attached (``SCM_RIGHTS``), then waits until a byte or
end-of-file arrives on that socket, for at most ``USDTKIT_RENDEZVOUS_TIMEOUT`` seconds (5 by default):
until ``DEADLINE``, in milliseconds of ``CLOCK_MONOTONIC`` (:func:`time.monotonic`'s clock, the same in
every process), so the tracer can tell when it answered too late.
The tracer reads the sender's PID from the kernel (``SO_PASSCRED``; never from the message), attaches,
and :meth:`Announcement.answer` writes the byte.  A tracer that closes its end, or dies, releases
every waiter at once: the kernel closes the descriptors of queued messages, and a waiter's socket
reads end-of-file.  The C side is ``native/rendezvous.c``, which also explains why a stale or foreign
variable is ignored.

Only the tracer's own command tree holds the other end, so announcements come from processes it
started; still, every field is checked (the provider name is a name, the numbers are numbers) and every
descriptor a message carries is closed.
"""
from __future__ import annotations

import array
import os
import select
import socket
import stat
import struct
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ..errors import UsdtkitError

ENVIRONMENT = "USDTKIT_RENDEZVOUS"
TIMEOUT_ENVIRONMENT = "USDTKIT_RENDEZVOUS_TIMEOUT"
_MAGIC = "usdtkit-rendezvous 1"
_MAX_MESSAGE = 8192  # a path is at most 4096 bytes; anything longer is not an announcement
_MAX_FDS = 4  # descriptors accepted (and closed) per message; a well-formed one carries one
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass
class Announcement:
    """One ``providerLoad()`` in process ``pid``: its provider, the loaded object by device and inode (to
    find it among the process's mappings) and by the path the process loaded it from (for people), and
    when the process stops waiting (:func:`time.monotonic` seconds)."""

    pid: int
    provider: str
    device: int
    inode: int
    deadline: float
    path: str
    _reply: Optional[socket.socket] = field(default=None, repr=False)

    def answer(self) -> None:
        """Let the process go on (idempotent).  It may have stopped waiting already: nothing to do then."""
        reply, self._reply = self._reply, None
        if reply is not None:
            try:
                reply.send(b"1", socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except OSError:
                pass
            reply.close()


class Rendezvous:
    """Made before the command starts: :meth:`environment` and :attr:`child_fd` are what it inherits;
    :meth:`receive` returns its announcements."""

    def __init__(self) -> None:
        self._server, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._child: Optional[socket.socket] = child
        self._value = f"{child.fileno()}:{os.fstat(child.fileno()).st_ino}"

    @property
    def child_fd(self) -> int:
        """The end the command inherits (at this very number: ``subprocess`` keeps passed fds' numbers)."""
        if self._child is None:
            raise UsdtkitError("the rendezvous was handed over already")
        return self._child.fileno()

    def environment(self) -> Dict[str, str]:
        return {ENVIRONMENT: self._value}

    def handed_over(self) -> None:
        """Close the tracer's copy of the command's end once the command has its own."""
        if self._child is not None:
            self._child.close()
            self._child = None

    def fileno(self) -> int:
        return self._server.fileno()

    def receive(self, timeout: Optional[float] = None, wake: int = -1) -> Optional[Announcement]:
        """The next announcement, waiting up to ``timeout`` seconds (None: no limit) or until ``wake``
        (an fd) is readable; None then, or when a message was not an announcement (it is dropped)."""
        waiter = select.poll()
        waiter.register(self._server, select.POLLIN)
        if wake >= 0:
            waiter.register(wake, select.POLLIN)
        ready = dict(waiter.poll(None if timeout is None else max(timeout, 0.0) * 1000))
        if self._server.fileno() not in ready:
            return None
        try:
            data, ancillary, flags, _ = self._server.recvmsg(
                _MAX_MESSAGE, socket.CMSG_SPACE(_MAX_FDS * 4) + socket.CMSG_SPACE(_CREDENTIALS.size),
                socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return None
        pid, fds = _ancillary(ancillary)
        reply = _reply_socket(fds)
        parsed = _parse(data) if not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) else None
        if parsed is None or pid is None or reply is None:
            if reply is not None:
                reply.close()  # the sender stops waiting at once
            return None
        provider, device, inode, deadline, path = parsed
        return Announcement(pid, provider, device, inode, deadline, path, reply)

    def close(self) -> None:
        """Stop listening: waiting processes go on at once, later loads do not wait."""
        self.handed_over()
        self._server.close()


def _ancillary(ancillary: list) -> Tuple[Optional[int], list]:
    """The sender's PID (from the kernel) and the descriptors a message carried."""
    pid = None
    fds: list = []
    for level, kind, data in ancillary:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[:len(data) - len(data) % received.itemsize])
            fds.extend(received)
        elif kind == socket.SCM_CREDENTIALS and len(data) >= _CREDENTIALS.size:
            pid = _CREDENTIALS.unpack_from(data)[0]
    return (pid if pid and pid > 0 else None), fds


def _reply_socket(fds: list) -> Optional[socket.socket]:
    """The one descriptor an announcement carries, if it is a socket; every other one is closed."""
    reply = None
    for fd in fds:
        if reply is None and stat.S_ISSOCK(os.fstat(fd).st_mode):
            reply = socket.socket(fileno=fd)
        else:
            os.close(fd)
    return reply


def _parse(data: bytes) -> Optional[Tuple[str, int, int, float, str]]:
    """``(provider, device, inode, deadline, path)`` of a well-formed announcement, else None."""
    try:
        magic, provider, device, inode, deadline, path, rest = data.decode("utf-8", "surrogateescape").split("\n")
    except ValueError:
        return None
    if magic != _MAGIC or rest or not provider or len(provider) > 64 or not set(provider) <= _NAME_CHARS:
        return None
    if provider[0].isdigit() or not all(n.isascii() and n.isdigit() for n in (device, inode, deadline)):
        return None
    return provider, int(device), int(inode), int(deadline) / 1000, path
