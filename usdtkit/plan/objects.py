"""Binaries opened once, then read and attached through the same open file.

A tracer that reads a probe's notes from a path and later hands the kernel that path again gives anyone
who can rename a file in between (a user's own folder, a symlink, a process's ``/proc/PID/root``) a way
to make root place breakpoints and raise semaphores, at offsets of their choosing, in another binary.
usdtkit therefore opens each binary once (:class:`ObjectFile`), notes its device and inode, reads it
through ``/proc/self/fd/N`` and gives the kernel that same name at attach: the kernel resolves the magic
link to the file that was opened, whatever the path names by then.  For a process's objects the opened
file is also checked against the device and inode in ``/proc/PID/maps``.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from ..errors import TargetError


@dataclass(frozen=True, eq=False)
class ObjectFile:
    """One opened binary: ``path`` as the user or the process names it, the fd that holds it, and the
    device and inode it had when opened."""

    path: str
    fd: int
    device: int
    inode: int

    @property
    def proc_path(self) -> str:
        """A name for this very file that the kernel and this process resolve through the fd."""
        return f"/proc/self/fd/{self.fd}"

    def __repr__(self) -> str:
        return f"ObjectFile({self.path!r}, fd={self.fd}, dev={self.device:#x}, ino={self.inode})"


class ObjectTable:
    """The binaries one resolution opened, each once; closing the table closes them all."""

    def __init__(self) -> None:
        self._by_key: Dict[Tuple[str, Optional[Tuple[int, int]]], ObjectFile] = {}
        self._all: List[ObjectFile] = []
        self._used: set = set()  # ids of objects some resolved site refers to

    def open(self, path: str, open_path: Optional[str] = None,
             expect: Optional[Tuple[int, int]] = None) -> ObjectFile:
        """Open ``open_path`` (default ``path``) for reading; ``expect`` is the ``(device, inode)`` the
        file must have (the one a process maps), else :class:`TargetError`."""
        where = open_path or path
        key = (where, expect)
        known = self._by_key.get(key)
        if known is not None:
            return known
        try:
            fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            raise TargetError(f"{path}: no such file") from None
        except OSError as exc:
            raise TargetError(f"{path}: cannot open: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise TargetError(f"{path}: not a regular file")
            if expect is not None and (info.st_dev, info.st_ino) != expect:
                raise TargetError(f"{path}: the file on disk is not the one the process maps (replaced since "
                                  "it was loaded); refusing to attach to it")
        except BaseException:
            os.close(fd)
            raise
        obj = ObjectFile(path, fd, info.st_dev, info.st_ino)
        self._by_key[key] = obj
        self._all.append(obj)
        return obj

    @property
    def objects(self) -> Tuple[ObjectFile, ...]:
        return tuple(self._all)

    def keep_only(self, used: Iterable[ObjectFile]) -> None:
        """Close the objects that were opened but are not in ``used`` (searched, found nothing)."""
        keep = {id(o) for o in used}
        for obj in self._all:
            if id(obj) not in keep:
                _close(obj)
        self._all = [o for o in self._all if id(o) in keep]
        self._by_key = {k: o for k, o in self._by_key.items() if id(o) in keep}
        self._used &= keep

    def use(self, obj: ObjectFile) -> ObjectFile:
        """Mark ``obj`` as referred to by a resolved site: :meth:`discard` leaves it open."""
        self._used.add(id(obj))
        return obj

    def discard(self, obj: ObjectFile) -> None:
        """Close one object that turned out not to be needed (unless a site uses it)."""
        if id(obj) not in self._used:
            self.keep_only(o for o in self._all if o is not obj)

    def close(self) -> None:
        objects, self._all, self._by_key, self._used = self._all, [], {}, set()
        for obj in objects:
            _close(obj)


def _close(obj: ObjectFile) -> None:
    try:
        os.close(obj.fd)
    except OSError:
        pass
