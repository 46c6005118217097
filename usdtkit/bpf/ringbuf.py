"""A reader of a BPF ring buffer map (``BPF_MAP_TYPE_RINGBUF``) given only the map's fd.

The kernel lets the map fd be mapped in two parts:

* the *consumer page* (offset 0, one page, read-write): the consumer position, a u64 the reader
  advances to hand space back to producers;
* the *producer page* (offset one page, read-only) holding the producer position, followed by the data
  area of ``max_entries`` bytes, mapped twice in a row so that a record crossing the end of the area
  reads as one contiguous run.

Positions only grow; ``position & (size - 1)`` is the offset in the data area.  Each record starts with
an 8-byte header: a u32 length whose bit 31 (BUSY) says the producer has reserved but not yet committed
it and bit 30 (DISCARD) says it was thrown away, then a u32 the kernel uses to find the page of a
record.  Records take ``roundup(length + 8, 8)`` bytes.  A BUSY record stops the reader (records after
it may be committed, but positions must be handed back in order).

The map fd polls readable while records are pending, so the reader waits on an epoll fd watching it.
Waking a reader costs the producer an interrupt (irq_work) per wakeup, and a fast reader that keeps
catching up would be woken for nearly every record.  A program can instead commit with
``BPF_RB_NO_WAKEUP`` unless a flag it reads after reserving says the reader is about to sleep: the
reader raises the flag (``wake(True)``), looks once more, and only then waits; while it drains a burst
nobody wakes it, and the producer runs at full speed.  Plain loads and stores suffice on x86-64, where stores are seen in the order they were made.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import select
import struct
import time
from typing import Callable, Optional, Tuple

from ..errors import AttachError
from . import syscalls

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER_SIZE = 8
BPF_MAP_TYPE_RINGBUF = 27
_BPF_OBJ_GET_INFO_BY_FD = 15
_BUDGET_CHECK_EVERY = 64  # records between two looks at the clock

#: ``drain(consumer_map, producer_map, mask, budget_s) -> (records delivered, stopped early)``
NativeDrain = Callable[[mmap.mmap, mmap.mmap, int, float], Tuple[int, bool]]

_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")


class _MapInfo(ctypes.Structure):
    """The head of ``struct bpf_map_info``: all this reader needs (the kernel fills what fits)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


def ring_size(map_fd: int) -> int:
    """The data area size of ring buffer map ``map_fd`` (its ``max_entries``, a power-of-two number of
    pages); raises :class:`AttachError` when the fd is not a ring buffer map."""
    nr = syscalls.number("bpf")
    if nr is None:
        raise AttachError("no bpf system call number for this architecture")
    info = _MapInfo()
    attr = _InfoAttr(map_fd, ctypes.sizeof(info), ctypes.addressof(info))
    result, err = syscalls.call(nr, _BPF_OBJ_GET_INFO_BY_FD, ctypes.byref(attr), ctypes.sizeof(attr))
    if result < 0:
        raise AttachError(f"cannot inspect map fd {map_fd}: {os.strerror(err)}")
    if info.type != BPF_MAP_TYPE_RINGBUF:
        raise AttachError(f"map fd {map_fd} is not a ring buffer (map type {info.type})")
    return int(info.max_entries)


class RingBuffer:
    """Consume the records of one ring buffer map; ``on_record(data)`` gets each committed record as
    bytes and returns True to stop the current :meth:`poll` (that record counts as consumed).

    The map fd stays the caller's: :meth:`close` unmaps and closes the epoll fd only.
    """

    def __init__(self, map_fd: int, on_record: Callable[[bytes], bool],
                 wake: Optional[Callable[[bool], None]] = None) -> None:
        self._on_record = on_record
        self._wake = wake
        self._native: Optional[NativeDrain] = None
        self.size = ring_size(map_fd)
        self._mask = self.size - 1
        page = mmap.PAGESIZE
        self._data_start = page
        self._consumer: Optional[mmap.mmap] = None
        self._producer: Optional[mmap.mmap] = None
        self._epoll: Optional[select.epoll] = None
        try:
            self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._producer = mmap.mmap(map_fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ,
                                       offset=page)
            self._epoll = select.epoll(1)
            self._epoll.register(map_fd, select.EPOLLIN)
        except OSError as exc:
            self.close()
            raise AttachError(f"cannot map ring buffer fd {map_fd}: {exc.strerror or exc}") from None

    def set_drain(self, drain: Optional["NativeDrain"]) -> None:
        """Hand the records to ``drain(consumer, producer, mask, budget_s) -> (delivered, stopped)``
        instead of ``on_record``: a reader in C given the two mappings (see usdtkit.collect.native)."""
        self._native = drain

    def fileno(self) -> int:
        """The epoll fd: readable while records are pending (for a caller's own select loop)."""
        if self._epoll is None:
            raise ValueError("ring buffer is closed")
        return self._epoll.fileno()

    def pending(self) -> int:
        """Bytes between the consumer and the producer position (records, headers and padding)."""
        assert self._consumer is not None and self._producer is not None
        return _U64.unpack_from(self._producer, 0)[0] - _U64.unpack_from(self._consumer, 0)[0]

    def poll(self, timeout_ms: int, budget_s: float) -> int:
        """Deliver committed records, waiting up to ``timeout_ms`` (negative: without limit) for the
        first when none is pending; returns how many were delivered, within about ``budget_s`` however
        fast producers keep committing."""
        deadline = time.monotonic() + budget_s
        delivered, stopped = self._drain(deadline)
        if delivered or stopped or timeout_ms == 0 or self._epoll is None:
            return delivered
        if self._wake is None:
            self._epoll.poll(timeout_ms / 1000.0 if timeout_ms > 0 else -1)
            return self._drain(deadline)[0]
        self._wake(True)
        try:
            delivered, stopped = self._drain(deadline)  # what was committed before the flag was seen
            if not delivered:
                self._epoll.poll(timeout_ms / 1000.0 if timeout_ms > 0 else -1)
        finally:
            self._wake(False)
        return delivered or self._drain(deadline)[0]

    def _drain(self, deadline: float) -> Tuple[int, bool]:
        consumer, producer = self._consumer, self._producer
        if consumer is None or producer is None:
            return 0, False
        if self._native is not None:
            return self._native(consumer, producer, self._mask, max(0.0, deadline - time.monotonic()))
        on_record, mask, start = self._on_record, self._mask, self._data_start
        unpack_u32, unpack_u64 = _U32.unpack_from, _U64.unpack_from
        position = unpack_u64(consumer, 0)[0]
        delivered = 0
        try:
            while True:
                end = unpack_u64(producer, 0)[0]
                if position >= end:
                    return delivered, False
                while position < end:
                    offset = start + (position & mask)
                    header = unpack_u32(producer, offset)[0]
                    if header & BUSY:
                        return delivered, False  # the producer has not committed it yet
                    length = header & ~(BUSY | DISCARD) & 0xFFFFFFFF
                    position += (length + HEADER_SIZE + 7) & ~7
                    if header & DISCARD:
                        continue
                    delivered += 1
                    if on_record(producer[offset + HEADER_SIZE:offset + HEADER_SIZE + length]):
                        return delivered, True
                    if delivered % _BUDGET_CHECK_EVERY == 0:
                        # Published per batch, not per record: producers read it on every reserve.
                        _U64.pack_into(consumer, 0, position)
                        if time.monotonic() >= deadline:
                            return delivered, True
        finally:  # also when on_record raises: its record counts as consumed
            _U64.pack_into(consumer, 0, position)

    def close(self) -> None:
        """Unmap both areas and close the epoll fd (the map fd is left open)."""
        for area in (self._consumer, self._producer):
            if area is not None:
                area.close()
        self._consumer = self._producer = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
