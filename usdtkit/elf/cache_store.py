"""Entries of the discovery cache (``<cache root>/index``): written whole, read only when trusted, bounded.

Discovery keeps what it derived from one version of a file (a decoded function table, a formatted
listing) so the next run can skip the work.  Each entry records the file's path and status
(device, inode, size, mtime, ctime) beside the key it was made for, and the status (None: absent) of
every other file the result depends on (a separate debug file found by build-id)::

    magic (16 bytes) | head length (u32) | CRC-32 of head and body (u32) | head | body
    head = marshal((path, status, key, ((dependency, status or None), ...)))

Trust comes from where an entry lives, not from its contents: it is used only if it is a regular file
owned by this user with no group or world access, in a folder only this user can write (see
:mod:`usdtkit.privdir`), so no one else could have written it.  The CRC only catches damage (a
truncated or flipped entry is a miss, never a crash); anyone able to forge it could write the entry
anyway.

The folder is bounded.  Writing an entry first removes the entries of older versions of the same
path (a changed file), then sweeps: entries whose file is gone or changed (or a dependency), unused for
:data:`MAX_AGE` seconds, and the least recently used ones beyond :data:`MAX_BYTES` are removed.  A hit
marks its entry used (its mtime) at most once per :data:`TOUCH_EVERY` seconds.
"""
from __future__ import annotations

import marshal
import os
import struct
import zlib
from typing import List, Optional, Sequence, Tuple

#: Bounds of the folder: total size, and time since an entry was last used.
MAX_BYTES = 256 << 20
MAX_AGE = 30 * 24 * 3600
#: A hit refreshes its entry's mtime only if older than this (no metadata write on every listing).
TOUCH_EVERY = 3600

_MAGIC = b"USDTKIT-CACHE-1\0"
_PREFIX = struct.Struct("<16sII")

Status = Tuple[int, int, int, int, int]


def file_status(st: os.stat_result) -> Status:
    """What names one version of a file: device, inode, size, mtime and ctime (no one can set ctime back,
    so a file rewritten in place and given its old mtime still gets a new status)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def entry_name(path: str, status: Status, key: object) -> str:
    """``<path>-<generation>-<key>`` tags: the entries of one path share the first, and those made for
    one version of the file by one version of usdtkit the second (a file or usdtkit version change
    makes the others garbage); ``key`` tells apart what was derived (kind, options)."""
    from .. import __version__

    return f"{_tag(path)}-{_tag(repr((status, __version__)))}-{_tag(repr(key))}"


def _tag(text: str) -> str:
    """16 hex digits from ``text``.  A name only finds an entry, whose head is then compared in full, so
    two texts sharing a tag cost a miss, never a wrong answer: two cheap checksums do (importing hashlib
    would cost a listing from the cache milliseconds)."""
    data = text.encode(errors="surrogateescape")
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def _full_key(key: object) -> Tuple[str, object]:
    from .. import __version__

    return __version__, key


def folder() -> Optional[str]:
    """The private folder of the entries; None when no private folder can be had (then nothing is cached)."""
    from ..errors import UnsafePath
    from ..privdir import private_dir

    try:
        return private_dir("index")
    except UnsafePath:
        return None


def _parse(data: bytes) -> Optional[Tuple[object, memoryview]]:
    """(head, body) of entry bytes ``data`` if whole, else None."""
    if len(data) < _PREFIX.size:
        return None
    magic, head_len, crc = _PREFIX.unpack_from(data)
    view = memoryview(data)[_PREFIX.size:]
    if magic != _MAGIC or head_len > len(view) or zlib.crc32(view) != crc:
        return None
    try:
        head = marshal.loads(view[:head_len])
    except (ValueError, EOFError, TypeError):
        return None
    if not isinstance(head, tuple) or len(head) != 4:
        return None
    return head, view[head_len:]


def read(folder: str, path: str, status: Status, key: object) -> Optional[memoryview]:
    """The body of the trusted, whole entry made for ``key`` of ``path`` at ``status``; None on a miss."""
    from ..privdir import mark_used, open_private, read_all

    name = os.path.join(folder, entry_name(path, status, key))
    found = open_private(name, read_all)
    parsed = None if found is None else _parse(found[0])
    if parsed is None or parsed[0][1:3] != (status, _full_key(key)) or not _unchanged(parsed[0][3]):
        return None
    mark_used(name, found[1], TOUCH_EVERY)  # type: ignore[index]
    return parsed[1]


def write(folder: str, path: str, status: Status, key: object, body: Sequence[bytes],
          stat_path: Optional[str] = None, deps: Sequence[Tuple[str, Optional[Status]]] = ()) -> None:
    """Publish ``body`` as the entry for ``key`` of ``path`` (at ``status``), then bound the folder.

    ``stat_path`` (default ``path``) is where a sweep looks to see whether the file is still there and
    unchanged; ``deps`` are the other files the body was derived from, from :func:`snapshot` taken
    before they were read (so a change while reading makes the entry stale, not wrong).  A cache that
    cannot be written only costs the speed-up: errors are swallowed.
    """
    from ..errors import UnsafePath
    from ..privdir import publish

    head = marshal.dumps((stat_path or path, status, _full_key(key), tuple(deps)))
    crc = zlib.crc32(head)
    for part in body:
        crc = zlib.crc32(part, crc)
    name = entry_name(path, status, key)

    def fill(fd: int) -> None:
        for part in (_PREFIX.pack(_MAGIC, len(head), crc), head, *body):
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view):]

    try:
        _remove_versions(folder, name)
        publish(folder, name, fill)
        sweep(folder)
    except (OSError, UnsafePath):
        pass


def _remove_versions(folder: str, name: str) -> None:
    """Remove the entries of the path ``name`` belongs to made for another generation (file or usdtkit
    version)."""
    path_tag, generation, _ = name.split("-")
    for other in os.listdir(folder):
        parts = other.split("-")
        if len(parts) == 3 and parts[0] == path_tag and parts[1] != generation:
            _unlink(os.path.join(folder, other))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def status_of(path: str) -> Optional[Status]:
    """:func:`file_status` of ``path`` (symlinks followed), None if it cannot be had."""
    try:
        return file_status(os.stat(path))
    except (OSError, ValueError):
        return None


def snapshot(paths: Sequence[str]) -> Tuple[Tuple[str, Optional[Status]], ...]:
    """Each of ``paths`` with its status now (None: absent), to record as an entry's dependencies."""
    return tuple((path, status_of(path)) for path in paths)


def check_path(display: str, open_path: str, status: Status) -> str:
    """Where a sweep should look for the file: its display path if that names this version (the path a
    process sees may be another file here, or none), else the path it was opened by."""
    return display if display != open_path and _current(display, status) else open_path


def _current(path: str, status: object) -> bool:
    """Whether ``path`` still names the file version ``status``."""
    return status is not None and status_of(path) == status


def _unchanged(deps: object) -> bool:
    """Whether every dependency still has its recorded status (or is still absent)."""
    return isinstance(deps, tuple) and all(
        isinstance(d, tuple) and len(d) == 2 and status_of(d[0]) == d[1] for d in deps)


def sweep(folder: str, now: Optional[float] = None) -> List[str]:
    """Bound ``folder``: remove entries of gone or changed files, unused for :data:`MAX_AGE`, and the
    least recently used beyond :data:`MAX_BYTES`, plus dead temp files.  Returns the removed names."""
    from ..privdir import prune

    def judge(full: str) -> Optional[Tuple[bool, os.stat_result]]:
        found = _read_head(full)
        if found is None:
            return None  # not ours to judge: another user's file
        recorded, st = found
        return (recorded is not None and _current(*recorded[:2]) and _unchanged(recorded[2])), st

    return prune(folder, judge, MAX_BYTES, MAX_AGE, now)


def _read_head(full: str) -> Optional[Tuple[Optional[Tuple[str, object, object]], os.stat_result]]:
    """(path, status, dependencies) recorded in the trusted entry at ``full`` (None if it is damaged or
    of another format), and the entry's status; None if the file is not a trusted entry at all."""
    from ..privdir import open_private

    return open_private(full, lambda fd, st: _recorded(fd, st.st_size))


def _recorded(fd: int, size: int) -> Optional[Tuple[str, object, object]]:
    """(path, status, dependencies) from the head of the entry open at ``fd``; None if damaged or of
    another format."""
    try:
        magic, head_len, _ = _PREFIX.unpack(os.read(fd, _PREFIX.size))
        if magic != _MAGIC or head_len > size:
            return None
        head = marshal.loads(os.read(fd, head_len))
    except (ValueError, EOFError, TypeError, struct.error):
        return None
    if not isinstance(head, tuple) or len(head) != 4 or not isinstance(head[0], str):
        return None
    return head[0], head[1], head[3]
