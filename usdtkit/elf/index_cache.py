"""A cache of function tables, so listing a big library a second time skips decoding its symbols.

Decoding libjvm's ``.symtab`` (58,000 functions) costs tens of milliseconds every time; the result
depends only on the file's bytes.  The first listing stores the decoded columns in the private cache
folder (``<cache root>/index``, see :mod:`usdtkit.privdir`); later ones load them back.

An entry is found by a key naming the exact file version: device, inode, size, mtime and ctime of the
open file, plus the entry format and usdtkit version (a new decoder must not reuse an old one's
output).  ctime is part of it because no one can set it back: a file rewritten in place and given its
old mtime (``touch -d``) still gets a new ctime.  A table that could come from other files (a
separate debug file, found by build-id when the library has no ``.symtab``) is never cached: its key
would not see those files change.

An entry is trusted only if it is a regular file owned by this user with no group or world access in
a folder only this user can write, starts with the format's magic, and its SHA-256 matches its
contents; and only then is it decoded (:mod:`marshal` must never read bytes someone else could have
written).  Anything else is a miss: the table is decoded again and the entry replaced.  A cache that
cannot be used at all (no private folder, full disk) only costs the speed-up.
"""
from __future__ import annotations

import hashlib
import marshal
import os
from typing import Optional, Tuple

from .image import SHT_SYMTAB, ElfImage
from .symbols import FunctionTable, function_table

#: Entry format; bump when the stored columns change.
FORMAT = 1
_MAGIC = b"USDTKIT-FUNCTIONS\0"
_DIGEST = 32  # SHA-256
_COLUMNS = FunctionTable.__slots__


def cache_key(st: os.stat_result) -> Tuple[object, ...]:
    """What names one version of a file, for the file whose status is ``st``."""
    from .. import __version__

    return (FORMAT, __version__, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def entry_name(key: Tuple[object, ...]) -> str:
    return hashlib.sha256(repr(key).encode()).hexdigest()[:40]


def _folder() -> Optional[str]:
    from ..errors import UnsafePath
    from ..privdir import private_dir

    try:
        return private_dir("index")
    except UnsafePath:
        return None


def _encode(key: Tuple[object, ...], table: FunctionTable) -> bytes:
    payload = marshal.dumps((key, tuple(getattr(table, name) for name in _COLUMNS)))
    return _MAGIC + hashlib.sha256(payload).digest() + payload


def _decode(data: bytes, key: Tuple[object, ...]) -> Optional[FunctionTable]:
    """The table in entry ``data`` if it is whole and made for ``key``, else None."""
    head = len(_MAGIC) + _DIGEST
    if not data.startswith(_MAGIC) or len(data) < head:
        return None
    payload = memoryview(data)[head:]
    if hashlib.sha256(payload).digest() != data[len(_MAGIC):head]:
        return None
    try:
        stored_key, columns = marshal.loads(payload)
    except (ValueError, EOFError, TypeError):
        return None
    if stored_key != key or not isinstance(columns, tuple) or len(columns) != len(_COLUMNS):
        return None
    table = FunctionTable()
    count = len(columns[0]) if isinstance(columns[0], list) else -1
    for name, column in zip(_COLUMNS, columns):
        if column is None and name in ("versions", "ifuncs"):
            continue
        if not isinstance(column, list) or len(column) != count:
            return None
        setattr(table, name, column)
    return table


def trusted_entry(path: str) -> Optional[bytes]:
    """The bytes of the cache entry at ``path`` if only this user could have written it, else None."""
    from ..privdir import read_private_file

    return read_private_file(path)


def load(image: ElfImage) -> Tuple[Optional[FunctionTable], Optional[Tuple[object, ...]]]:
    """The cached table of ``image`` (None on a miss) and the key to store it under (None: not cacheable)."""
    st = image.status()
    if st is None or not any(s.type == SHT_SYMTAB for s in image.sections):
        return None, None
    key = cache_key(st)
    folder = _folder()
    if folder is None:
        return None, None
    data = trusted_entry(os.path.join(folder, entry_name(key)))
    return (None if data is None else _decode(data, key)), key


def store(key: Tuple[object, ...], table: FunctionTable) -> None:
    """Publish ``table`` under ``key``; a cache that cannot be written is skipped."""
    from ..errors import UnsafePath
    from ..privdir import publish

    folder = _folder()
    if folder is None:
        return
    data = _encode(key, table)

    def write(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    try:
        publish(folder, entry_name(key), write)
    except (OSError, UnsafePath):
        pass


def cached_function_table(image: ElfImage) -> FunctionTable:
    """:func:`~usdtkit.elf.symbols.function_table` of ``image`` (all functions), through the cache."""
    table, key = load(image)
    if table is not None:
        return table
    table = function_table(image)
    if key is not None:
        store(key, table)
    return table
