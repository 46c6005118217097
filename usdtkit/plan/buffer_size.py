"""How big the event buffer is: ``--buffer-size 64M`` / ``buffer_size=`` turned into ring buffer pages.

Events go through one BPF ring buffer shared by every CPU.  The kernel takes a size that is a power of
two number of pages, allocates all of it when the program loads, and keeps it resident (it is not
swappable and counts against the tracer's memory cgroup).  A record that finds no room is dropped and
counted, so the buffer is what absorbs a burst while the reader catches up: a burst of N records of B
bytes (plus an 8-byte header each) fired at rate P while the reader drains at rate R needs about
``N * (B + 8) * (1 - R / P)`` bytes.

The default, 64 MiB, holds about 800,000 records of the smallest shape (72 bytes and its header): a
burst of a million at full speed is caught whole by a reader draining a fifth as fast as the target
fires; it costs no more memory than the tracer process itself typically uses.
"""
from __future__ import annotations

import mmap
import re
from typing import Union

from ..errors import UsageError

PAGE_SIZE = mmap.PAGESIZE
DEFAULT_BUFFER_BYTES = 64 << 20
MAX_BUFFER_BYTES = 1 << 30  # more is a typo more often than a need, and the kernel wants it resident
DEFAULT_RING_PAGES = DEFAULT_BUFFER_BYTES // PAGE_SIZE

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SIZE = re.compile(r"\s*(\d+)\s*([KMG]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_size(text: Union[int, str]) -> int:
    """Bytes in ``text``: a whole number with an optional binary unit (``K``, ``M``, ``G``; ``KiB``,
    ``MB`` and so on mean the same), or an int."""
    if isinstance(text, bool):
        raise UsageError(f"buffer size {text!r} is not a size")
    if isinstance(text, int):
        return text
    found = _SIZE.fullmatch(str(text))
    if found is None:
        raise UsageError(f"buffer size {text!r} is not a size: give bytes or a number with K, M or G (e.g. 64M)")
    return int(found.group(1)) * _UNITS[found.group(2).upper()]


def ring_pages(size: Union[int, str]) -> int:
    """Ring buffer pages for a buffer of ``size`` (see :func:`parse_size`): rounded up to the power of
    two the kernel requires, at least one page, at most :data:`MAX_BUFFER_BYTES`."""
    count = parse_size(size)
    if count <= 0:
        raise UsageError(f"buffer size {size!r} must be positive")
    if count > MAX_BUFFER_BYTES:
        raise UsageError(f"buffer size {size!r} is more than the {MAX_BUFFER_BYTES >> 30} GiB usdtkit allows")
    pages = -(-count // PAGE_SIZE)
    return 1 << (pages - 1).bit_length()
