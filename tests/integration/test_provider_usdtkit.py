"""Probes declared with usdtkit.provider, traced by usdtkit itself: exact round trips of every type,
``enabled`` following the trace, and one trace by provider name covering a forked multi-process service."""
from __future__ import annotations

import os
import signal
import time

import pytest

from usdtkit.provider import Provider, int8, int16, int32, uint8, uint16, uint32, uint64
from usdtkit.tracing.api import trace


@pytest.mark.bpf
def test_every_type_round_trips_exactly_in_this_process():
    app = Provider("rt_usdtkit")
    ints = app.probe("ints", int8, uint8, int16, uint16, int32, uint32)
    wide = app.probe("wide", int, uint64, bool, str, str)
    app.load()
    try:
        rows_ints = [(-128, 255, -32768, 65535, -2**31, 2**32 - 1), (127, 0, 32767, 0, 2**31 - 1, 0)]
        rows_wide = [(2**63 - 1, 2**64 - 1, True, "h\u00e9llo w\u00f6rld \u2603", ""),
                     (-2**63, 0, False, "\u65e5\u672c\u8a9e", "x" * 40)]
        with trace("usdt::rt_usdtkit:ints", "usdt::rt_usdtkit:wide", pid=os.getpid(),
                   strings=["arg3", "arg4"]) as session:
            assert ints.enabled and wide.enabled
            for row in rows_ints:
                ints(*row)
            for row in rows_wide:
                wide(*row)
            session.run(duration=0.2)
            got = [(e.probe, e.args) for e in session.events]
        assert got == [("rt_usdtkit:ints", r) for r in rows_ints] + [
            ("rt_usdtkit:wide", (a, b, int(c), d, e)) for a, b, c, d, e in rows_wide]
        assert not ints.enabled and not wide.enabled  # semaphores back to 0 after detach
    finally:
        app.close()


@pytest.mark.bpf
def test_one_trace_by_provider_name_sees_every_worker():
    app = Provider("mp_usdtkit")
    tick = app.probe("tick", int, int)
    app.load()
    workers = []
    go_r, go_w = os.pipe()
    for worker in range(3):
        pid = os.fork()
        if pid == 0:  # a worker: wait for the go, fire 5 times, exit
            os.close(go_w)
            os.read(go_r, 1)
            for i in range(5):
                tick(worker, i)
            os._exit(0)
        workers.append(pid)
    os.close(go_r)
    try:
        # no binary and no PID: every process that has the provider loaded
        with trace("usdt::mp_usdtkit:tick", count_by=["pid", "arg0"]) as session:
            for i in range(5):
                tick(99, i)
            os.write(go_w, b"ggg")
            for pid in workers:
                os.waitpid(pid, 0)
            workers.clear()
            session.run(duration=0.2)
            counts = dict(session.counts())
        want = {("mp_usdtkit:tick", os.getpid(), 99): 5}
        assert set(counts.values()) == {5}
        assert want.items() <= counts.items()
        assert len(counts) == 4  # the parent and three workers, each its own pid
    finally:
        os.close(go_w)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        app.close()


@pytest.mark.bpf
def test_a_worker_started_after_the_trace_is_covered():
    app = Provider("late_usdtkit")
    app.probe("tick", int)  # the parent declares it too: same definition, same file
    app.load()
    try:
        with trace(f"usdt:{app.path}:late_usdtkit:tick", count_by=["pid"]) as session:
            pid = os.fork()
            if pid == 0:
                late = Provider("late_usdtkit")  # a fresh process loading the same provider: same file
                late_tick = late.probe("tick", int)
                late.load()
                deadline = time.time() + 10
                while not late_tick.enabled and time.time() < deadline:
                    time.sleep(0.01)
                for i in range(3):
                    late_tick(i)
                os._exit(0 if late.path == app.path else 3)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            session.run(duration=0.2)
            assert dict(session.counts()) == {("late_usdtkit:tick", pid): 3}
    finally:
        app.close()


@pytest.mark.bpf
def test_the_pypi_stapsdt_example_is_traced_by_usdtkit():
    """PyPI stapsdt, unmodified, on our library (loaded by `import usdtkit`), seen by usdtkit."""
    import usdtkit  # noqa: F401  (preloads our libstapsdt.so)
    import stapsdt

    provider = stapsdt.Provider("pythonapp")
    probe = provider.add_probe("firstProbe", stapsdt.ArgTypes.uint64, stapsdt.ArgTypes.int32)
    provider.load()
    try:
        with trace("usdt::pythonapp:firstProbe", pid=os.getpid()) as session:
            assert probe.is_enabled
            assert probe.fire(12345, -42)  # stapsdt passes ints as C ints: small values only
            session.run(duration=0.2)
            assert [e.args for e in session.events] == [(12345, -42)]
        assert not probe.is_enabled
    finally:
        provider.unload()
