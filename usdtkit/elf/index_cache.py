"""A cache of function tables, so listing a big library a second time skips decoding its symbols.

Decoding libjvm's ``.symtab`` (58,000 functions) costs tens of milliseconds every time; the result
depends only on the file's bytes.  The first listing stores the decoded columns as an entry of the
discovery cache (:mod:`usdtkit.elf.cache_store`: trusted only if only this user could have written it,
bounded in size and age); later ones load them back.

An entry is found by the path and the exact file version (device, inode, size, mtime and ctime of the
open file), plus the entry format and usdtkit version (a new decoder must not reuse an old one's
output).  A table that could come from other files (a separate debug file, found by build-id when the
library has no ``.symtab``) is never cached: its key would not see those files change.  Anything but a
whole, trusted entry is a miss: the table is decoded again and the entry replaced.
"""
from __future__ import annotations

import marshal
from typing import Optional, Tuple

from . import cache_store
from .image import SHT_SYMTAB, ElfImage
from .symbols import FunctionTable, function_table

#: Entry format; bump when the stored columns change.
FORMAT = 2
_COLUMNS = FunctionTable.__slots__

Where = Tuple[str, str, cache_store.Status, str]  # cache folder, path, file status, path to check


def _decode(body: memoryview) -> Optional[FunctionTable]:
    """The table stored in ``body`` if its columns are whole, else None."""
    try:
        columns = marshal.loads(body)
    except (ValueError, EOFError, TypeError):
        return None
    if not isinstance(columns, tuple) or len(columns) != len(_COLUMNS):
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


def load(image: ElfImage) -> Tuple[Optional[FunctionTable], Optional[Where]]:
    """The cached table of ``image`` (None on a miss) and where to store it (None: not cacheable)."""
    st = image.status()
    if st is None or not any(s.type == SHT_SYMTAB for s in image.sections):
        return None, None
    folder = cache_store.folder()
    if folder is None:
        return None, None
    status = cache_store.file_status(st)
    where = (folder, image.display, status, cache_store.check_path(image.display, image.path, status))
    body = cache_store.read(folder, image.display, status, ("functions", FORMAT))
    return (None if body is None else _decode(body)), where


def store(where: Where, table: FunctionTable) -> None:
    """Publish ``table``; a cache that cannot be written is skipped."""
    folder, path, status, stat_path = where
    body = marshal.dumps(tuple(getattr(table, name) for name in _COLUMNS))
    cache_store.write(folder, path, status, ("functions", FORMAT), [body], stat_path)


def cached_function_table(image: ElfImage) -> FunctionTable:
    """:func:`~usdtkit.elf.symbols.function_table` of ``image`` (all functions), through the cache."""
    table, where = load(image)
    if table is not None:
        return table
    table = function_table(image)
    if where is not None:
        store(where, table)
    return table
