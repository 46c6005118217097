"""What ``usdtkit list`` printed for one file, kept so listing it again is a stat, a checked read and a write.

A listing is built per object (a file, or each object a process maps) as a :class:`Fragment`: how many
probes and functions it lists and the text of its part of the output, UTF-8, with a NUL where the
per-listing text goes (a process's pid and the path it is opened by, or the table header naming the
object), since NUL never occurs in the text itself (JSON escapes it, the table shows it escaped).
Everything else in the text follows from the file's bytes and the options, so the fragment is kept in
the discovery cache (:mod:`usdtkit.elf.cache_store`) under the file's path and status and the options
that shape it; a function table read from a separate debug file records that file as a dependency.
Demangled listings are not kept: they depend on the installed ``c++filt``.
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Optional, Sequence, Tuple

from ..elf import cache_store

#: Entry format; bump when the fragment text or layout changes.
FORMAT = 1
#: Stands for the per-listing text in a fragment.
HOLE = "\0"
_COUNTS = struct.Struct("<QQI")  # probes, functions, number of parts; then each part's length (u64)


class Fragment(NamedTuple):
    """One object's part of a listing."""

    probes: int
    functions: int
    parts: Tuple[bytes, ...]  # JSON: (probe rows, function rows); table: (text,)


def encode(fragment: Fragment) -> list:
    """The fragment as the byte strings of a cache entry's body."""
    lengths = struct.pack(f"<{len(fragment.parts)}Q", *map(len, fragment.parts))
    return [_COUNTS.pack(fragment.probes, fragment.functions, len(fragment.parts)), lengths, *fragment.parts]


def decode(body: memoryview) -> Optional[Fragment]:
    """The fragment of an entry's body (parts are views into it, not copies); None if it does not add up."""
    if len(body) < _COUNTS.size:
        return None
    probes, functions, count = _COUNTS.unpack_from(body)
    at = _COUNTS.size + 8 * count
    if count > 16 or at > len(body):
        return None
    parts = []
    for length in struct.unpack_from(f"<{count}Q", body, _COUNTS.size):
        parts.append(body[at:at + length])
        at += length
    return Fragment(probes, functions, tuple(parts)) if at == len(body) else None  # type: ignore[arg-type]


class Slot(NamedTuple):
    """Where one object's fragment is kept: cache folder, the object's path and status, and the key."""

    folder: str
    path: str
    status: cache_store.Status
    key: tuple


def slot(display: str, open_path: str, options: Sequence[object]) -> Optional[Slot]:
    """Where the fragment of the file at ``open_path`` (shown as ``display``) is kept; None: no cache."""
    status = cache_store.status_of(open_path)
    folder = cache_store.folder() if status is not None else None
    if folder is None:
        return None
    return Slot(folder, display, status, ("listing", FORMAT, display, *options))  # type: ignore[arg-type]


def load(where: Slot) -> Optional[Fragment]:
    body = cache_store.read(where.folder, where.path, where.status, where.key)
    return None if body is None else decode(body)


def store(where: Slot, open_path: str, status: cache_store.Status, fragment: Fragment,
          deps: Sequence[Tuple[str, Optional[cache_store.Status]]]) -> None:
    """Keep ``fragment``, made from the file version ``status`` (read at ``open_path``) and the
    dependencies ``deps`` (a :func:`~usdtkit.elf.cache_store.snapshot` taken before reading them)."""
    stat_path = cache_store.check_path(where.path, open_path, status)
    cache_store.write(where.folder, where.path, status, where.key, encode(fragment), stat_path, deps)
