"""The ring buffer reader on a real BPF ring buffer map, filled by a real BPF program.

A tracepoint program on ``getppid`` (filtered to this test's process) writes one record per call: its
length and whether it is committed or discarded come from a ``config`` array this test sets, and its
bytes are a sequence number followed by a known pattern.  One page of ring makes the positions wrap
around the data area many times, and some records straddle its end (the kernel maps it twice so they
read as one run).
"""
from __future__ import annotations

import os
import struct
from typing import List

import pytest

from usdtkit.bpf.bcc_backend import Program
from usdtkit.bpf.ringbuf import RingBuffer, ring_size
from usdtkit.errors import AttachError

FILLER = r"""
BPF_RINGBUF_OUTPUT(events, 1);
BPF_ARRAY(config, u64, 4);   /* 0: this process, 1: record length, 2: discard when nonzero */
BPF_ARRAY(seq, u64, 1);
struct big { u64 seq; u8 bytes[248]; };
BPF_PERCPU_ARRAY(scratch, struct big, 1);

int fill(void *ctx) {
    int zero = 0, one = 1, two = 2;
    u64 *pid = config.lookup(&zero), *len = config.lookup(&one), *drop = config.lookup(&two);
    u64 *n = seq.lookup(&zero);
    struct big *b = scratch.lookup(&zero);
    if (!pid || !len || !drop || !n || !b || (bpf_get_current_pid_tgid() >> 32) != *pid)
        return 0;
    u64 size = *len;
    if (size < 8 || size > sizeof(*b))
        return 0;
    *n += 1;
    b->seq = *n;
    for (int i = 0; i < 248; i++)
        b->bytes[i] = (u8)(i + *n);
    if (*drop) {
        struct big *r = events.ringbuf_reserve(sizeof(struct big));
        if (r) {
            r->seq = *n;
            events.ringbuf_discard(r, 0);
        }
        return 0;
    }
    events.ringbuf_output(b, size, 0);
    return 0;
}
"""


@pytest.fixture()
def filler():
    program = Program(FILLER)
    program.attach_tracepoint("fill", "syscalls", "sys_enter_getppid")
    program.set_config(0, os.getpid())
    yield program
    program.close()


def fire(program: Program, length: int, times: int, discard: bool = False) -> None:
    program.set_config(1, length)
    program.set_config(2, int(discard))
    for _ in range(times):
        os.getppid()


def expected(seq: int, length: int) -> bytes:
    return (struct.pack("=Q", seq) + bytes((i + seq) & 0xFF for i in range(248)))[:length]


def test_records_wrap_around_the_data_area_whole(filler: Program) -> None:
    got: List[bytes] = []
    ring = RingBuffer(filler.table("events").map_fd, lambda data: got.append(data) and False)
    try:
        assert ring.size == ring_size(filler.table("events").map_fd) == 4096
        seq = 0
        # 100-byte records take 112 bytes: positions cross 4096 at a different offset each round.
        for length in (100, 13, 256, 100, 8, 77):
            for _ in range(6):
                fire(filler, length, 12)
                assert ring.poll(0, 1.0) == 12
                assert got == [expected(seq + i + 1, length) for i in range(12)]
                seq += 12
                got.clear()
                assert ring.pending() == 0
    finally:
        ring.close()


def test_discarded_records_are_skipped_and_their_space_returned(filler: Program) -> None:
    got: List[bytes] = []
    ring = RingBuffer(filler.table("events").map_fd, lambda data: got.append(data) and False)
    try:
        fire(filler, 40, 5)
        fire(filler, 40, 3, discard=True)  # sequence numbers 6..8 go to discarded records
        fire(filler, 40, 2)
        assert ring.poll(0, 1.0) == 7
        assert [struct.unpack_from("=Q", r)[0] for r in got] == [1, 2, 3, 4, 5, 9, 10]
        assert ring.pending() == 0
        for _ in range(50):  # only discards: the ring would fill if their space were not handed back
            fire(filler, 40, 20, discard=True)
            assert ring.poll(0, 1.0) == 0
        assert ring.pending() == 0
    finally:
        ring.close()


def test_a_full_ring_drops_and_the_reader_stops_when_asked(filler: Program) -> None:
    got: List[bytes] = []

    def take(data: bytes) -> bool:
        got.append(data)
        return len(got) == 3

    ring = RingBuffer(filler.table("events").map_fd, take)
    try:
        fire(filler, 256, 100)  # 264 bytes each: 15 fit in 4096
        assert ring.poll(0, 1.0) == 3
        assert ring.poll(0, 1.0) == 12
        assert [struct.unpack_from("=Q", r)[0] for r in got] == list(range(1, 16))
    finally:
        ring.close()


def test_poll_waits_for_a_record_and_fileno_is_readable(filler: Program) -> None:
    import select

    ring = RingBuffer(filler.table("events").map_fd, lambda data: False)
    try:
        assert ring.poll(50, 1.0) == 0  # nothing comes: returns after the timeout
        fire(filler, 16, 1)
        assert select.select([ring.fileno()], [], [], 1.0)[0] == [ring.fileno()]
        assert ring.poll(1000, 1.0) == 1
    finally:
        ring.close()


def test_not_a_ring_buffer_is_a_clear_error(filler: Program) -> None:
    with pytest.raises(AttachError, match="not a ring buffer"):
        RingBuffer(filler.table("config").map_fd, lambda data: False)


def test_close_releases_the_mappings_and_the_epoll_fd(filler: Program) -> None:
    before = set(os.listdir("/proc/self/fd"))
    maps_before = open("/proc/self/maps").read().count("anon_inode:bpf-ringbuf")
    ring = RingBuffer(filler.table("events").map_fd, lambda data: False)
    ring.close()
    assert set(os.listdir("/proc/self/fd")) == before
    assert open("/proc/self/maps").read().count("anon_inode:bpf-ringbuf") == maps_before
    os.fstat(filler.table("events").map_fd)  # the map fd is the caller's and stays open


def test_a_record_whose_callback_raises_is_consumed(filler: Program) -> None:
    got: List[int] = []

    def take(data: bytes) -> bool:
        seq = struct.unpack_from("=Q", data)[0]
        if seq == 2:
            raise KeyError(seq)
        got.append(seq)
        return False

    ring = RingBuffer(filler.table("events").map_fd, take)
    try:
        fire(filler, 16, 3)
        with pytest.raises(KeyError):
            ring.poll(0, 1.0)
        assert ring.poll(0, 1.0) == 1
        assert got == [1, 3] and ring.pending() == 0
    finally:
        ring.close()
