"""The ELF objects a running process has mapped, and where they are loaded.

``/proc/PID/maps`` lists every memory mapping of a process: address range, permissions, file offset,
device, inode and the path *as the process sees it*.  Each ELF object (executable, shared library,
``dlopen``-ed plugin) appears as a few mappings of the same file, one per ``PT_LOAD`` segment.

Three things make "the path" unreliable from outside the process, and each has a ``/proc`` answer:

* **Containers.**  The path is relative to the process's mount namespace; ``/proc/PID/root/PATH`` reaches
  the same file from ours.
* **Deleted files** (``/usr/lib/libfoo.so (deleted)`` after an upgrade) no longer have a path at all.
* **memfd objects** (``/memfd:jit (deleted)``), code loaded from an anonymous in-memory file.

For the last two, ``/proc/PID/map_files/START-END`` is a link to the mapped file itself (root, or
CAP_CHECKPOINT_RESTORE, only), and ``/proc/PID/fd/N`` reaches it when the process still holds it open.
A :class:`MappedObject` carries both the process's ``path`` and the ``open_path`` to read it from here.

**Load bias.**  A position-independent object is loaded at an arbitrary base: a link-time address ``A``
(a symbol value, a probe's pc) is at ``A + load_bias`` in the process.  The loader maps each PT_LOAD
segment at ``load_bias + p_vaddr`` (rounded down to a page) from file offset ``p_offset`` (rounded
likewise), so from any mapping ``(start, offset)`` of the object and the segment covering ``offset``:
``load_bias = start - offset - (p_vaddr - p_offset)``.  It is 0 for a non-PIE executable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..errors import ElfError, NoSuchProcess, TargetError
from .image import ELF_MAGIC, ElfImage

DELETED_SUFFIX = " (deleted)"
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Mapping:
    """One line of ``/proc/PID/maps`` belonging to an object."""

    start: int
    end: int
    perms: str
    offset: int


@dataclass(frozen=True)
class MappedObject:
    """An ELF object mapped by a process.

    ``path`` is the file as the process names it (without `` (deleted)``), ``open_path`` a path that
    opens the same file from this process (``path`` itself, ``/proc/PID/root/...``,
    ``/proc/PID/map_files/...`` or ``/proc/PID/fd/N``).  ``start``/``end`` span all its mappings,
    ``offset`` is the file offset of the lowest one, ``load_bias`` what to add to a link-time address
    (None if no PT_LOAD segment covers the mappings).
    """

    pid: int
    path: str
    open_path: str
    start: int
    end: int
    offset: int
    load_bias: Optional[int]
    deleted: bool = False
    memfd: bool = False
    inode: int = 0
    device: str = ""
    mappings: Tuple[Mapping, ...] = field(default_factory=tuple)

    def runtime_address(self, vaddr: int) -> int:
        """Where link-time address ``vaddr`` of this object is in the process."""
        if self.load_bias is None:
            raise TargetError(f"pid {self.pid}: {self.path}: load bias unknown")
        return vaddr + self.load_bias

    def to_json(self) -> dict:
        return {
            "pid": self.pid,
            "path": self.path,
            "open_path": self.open_path,
            "start": self.start,
            "end": self.end,
            "offset": self.offset,
            "load_bias": self.load_bias,
            "deleted": self.deleted,
            "memfd": self.memfd,
            "inode": self.inode,
            "device": self.device,
        }


def parse_device(text: str) -> Optional[int]:
    """A ``/proc/PID/maps`` device (``fd:01``) as a ``st_dev`` number."""
    major, sep, minor = text.partition(":")
    try:
        return os.makedev(int(major, 16), int(minor, 16)) if sep else None
    except ValueError:
        return None


def read_maps(pid: int) -> List[Tuple[Mapping, str, str, int]]:
    """``(mapping, pathname, device, inode)`` for each file-backed line of ``/proc/PID/maps``."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise NoSuchProcess(pid, "not a valid process id")
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            text = f.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise NoSuchProcess(pid) from None
    except ProcessLookupError:
        raise NoSuchProcess(pid) from None
    except PermissionError:
        raise TargetError(f"pid {pid}: permission denied reading /proc/{pid}/maps") from None
    except OSError as exc:
        raise TargetError(f"pid {pid}: cannot read /proc/{pid}/maps: {exc.strerror}") from None
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue  # anonymous mapping
        span, perms, offset, device, inode, pathname = parts
        if not pathname.startswith("/"):
            continue  # [heap], [stack], [vdso], [anon:...]
        lo, _, hi = span.partition("-")
        try:
            mapping = Mapping(int(lo, 16), int(hi, 16), perms, int(offset, 16))
            ino = int(inode)
        except ValueError:
            continue
        out.append((mapping, pathname, device, ino))
    return out


def process_objects(pid: int) -> List[MappedObject]:
    """Every ELF object mapped by ``pid``, in address order (NoSuchProcess if it is gone)."""
    groups: Dict[Tuple[str, int, str], List[Mapping]] = {}
    for mapping, pathname, device, inode in read_maps(pid):
        groups.setdefault((device, inode, pathname), []).append(mapping)
    objects = []
    for (device, inode, pathname), maps in groups.items():
        obj = _object(pid, pathname, device, inode, sorted(maps, key=lambda m: m.start))
        if obj is not None:
            objects.append(obj)
    if not objects and not os.path.exists(f"/proc/{pid}"):
        raise NoSuchProcess(pid, "vanished while reading its mappings")
    return sorted(objects, key=lambda o: o.start)


def _object(pid: int, pathname: str, device: str, inode: int, maps: List[Mapping]) -> Optional[MappedObject]:
    deleted = pathname.endswith(DELETED_SUFFIX)
    path = pathname[: -len(DELETED_SUFFIX)] if deleted else pathname
    memfd = path.startswith("/memfd:")
    open_path = _open_path(pid, path, pathname, inode, maps[0], deleted or memfd)
    if open_path is None or not _is_elf(open_path):
        return None
    first = maps[0]
    return MappedObject(
        pid=pid,
        path=path,
        open_path=open_path,
        start=first.start,
        end=max(m.end for m in maps),
        offset=first.offset,
        load_bias=_load_bias(open_path, path, maps),
        deleted=deleted,
        memfd=memfd,
        inode=inode,
        device=device,
        mappings=tuple(maps),
    )


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _inode(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _open_path(pid: int, path: str, pathname: str, inode: int, first: Mapping, gone: bool) -> Optional[str]:
    """A path opening the mapped file from here, or None if none works."""
    if not gone:
        rooted = f"/proc/{pid}/root{path}"
        if _inode(rooted) == inode:
            return path if _same_file(rooted, path) else rooted
    map_file = f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}"
    if _inode(map_file) == inode:
        return map_file
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        fds = []
    for fd in fds:
        link = os.path.join(fd_dir, fd)
        try:
            if os.readlink(link) == pathname and _inode(link) == inode:
                return link
        except OSError:
            continue
    if not gone and _inode(path) is not None:
        return path  # e.g. overlayfs, where maps and stat disagree on the inode
    return None


def _is_elf(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return os.pread(fd, 4, 0) == ELF_MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def _load_bias(open_path: str, path: str, maps: List[Mapping]) -> Optional[int]:
    """``start - offset - (p_vaddr - p_offset)`` for the first mapping covered by a PT_LOAD segment."""
    try:
        with ElfImage(open_path, path) as image:
            loads = image.loads
    except ElfError:
        return None
    for m in maps:
        for seg in loads:
            page_offset = seg.offset - seg.offset % _PAGE
            if page_offset <= m.offset < seg.offset + max(seg.filesz, 1):
                return m.start - m.offset - (seg.vaddr - seg.offset)
    return None
