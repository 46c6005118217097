"""The rendezvous between a tracer and a command it started (native/rendezvous.c, usdtkit.tracing.rendezvous):
a load announces itself (the kernel names the sender) and waits for the answer, the end of the tracer's
socket, or its time limit; without the variable, with a stale or foreign one, nothing waits; malformed
messages release their sender.  Real processes, no BPF."""
from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from usdtkit.tracing.rendezvous import ENVIRONMENT, Rendezvous

ROOT = Path(__file__).resolve().parents[2]

# Loads a provider (through usdtkit.provider, or the PyPI stapsdt binding) and reports how long the
# load took and how many sockets it holds before and after.
LOADER = """
import os, sys, time
def sockets():
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            held += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # the directory's own fd, closed again
            pass
    return held
before = sockets()
if sys.argv[1] == "stapsdt":
    import usdtkit._native
    usdtkit._native.load_library()
    import stapsdt
    app = stapsdt.Provider("rdv_pypi")
    app.add_probe("hit", stapsdt.ArgTypes.int64)
    started = time.monotonic()
    app.load()
    loaded = True
else:
    from usdtkit.provider import Provider
    app = Provider("rdv_unit")
    hit = app.probe("hit", int)
    started = time.monotonic()
    app.load()
    loaded = hit.loaded
took = time.monotonic() - started
print(f"{took:.3f} {int(loaded)} {before} {sockets()}", flush=True)
"""


def start(env: dict, pass_fds=(), binding: str = "usdtkit") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOADER, binding], stdout=subprocess.PIPE, text=True,
                            pass_fds=pass_fds, env=dict(os.environ, PYTHONPATH=str(ROOT), **env))


def report(child: subprocess.Popen) -> tuple:
    out, _ = child.communicate(timeout=60)
    took, loaded, before, after = out.split()
    return float(took), loaded == "1", int(before), int(after)


@pytest.fixture
def rendezvous():
    made = Rendezvous()
    yield made
    made.close()


@pytest.mark.parametrize("binding", ["usdtkit", "stapsdt"])
def test_a_load_announces_itself_and_waits_for_the_answer(rendezvous, binding):
    child = start({**rendezvous.environment(), "USDTKIT_RENDEZVOUS_TIMEOUT": "60"}, [rendezvous.child_fd], binding)
    rendezvous.handed_over()
    announcement = rendezvous.receive(timeout=30)
    assert announcement is not None
    assert announcement.pid == child.pid  # from the kernel, not from the message
    assert announcement.provider == ("rdv_pypi" if binding == "stapsdt" else "rdv_unit")
    stat = os.stat(announcement.path)
    assert (announcement.device, announcement.inode) == (stat.st_dev, stat.st_ino)
    assert 50 < announcement.deadline - time.monotonic() <= 60
    time.sleep(0.5)
    assert child.poll() is None  # still waiting for the answer
    announcement.answer()
    took, loaded, before, after = report(child)
    assert 0.5 <= took < 30 and loaded and after == before  # its own socket pair is closed again


def test_closing_the_tracers_end_releases_a_waiting_load_at_once(rendezvous):
    child = start({**rendezvous.environment(), "USDTKIT_RENDEZVOUS_TIMEOUT": "60"}, [rendezvous.child_fd])
    rendezvous.handed_over()
    deadline = time.monotonic() + 30
    while not select_readable(rendezvous.fileno()):  # the announcement is queued, unread
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    rendezvous.close()  # as a tracer's death does: the queued reply socket is closed with it
    took, loaded, _, _ = report(child)
    assert 0.3 <= took < 2 and loaded


def select_readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])


def test_the_wait_is_bounded(rendezvous):
    child = start({**rendezvous.environment(), "USDTKIT_RENDEZVOUS_TIMEOUT": "0.4"}, [rendezvous.child_fd])
    rendezvous.handed_over()
    took, loaded, _, _ = report(child)  # nobody reads the announcement
    assert 0.4 <= took < 2 and loaded


def test_without_the_variable_a_load_does_not_wait():
    took, loaded, before, after = report(start({}))
    assert took < 1 and loaded and after == before


def _bad_values():
    """(environment value, fds to pass) that name no rendezvous of this process."""
    stream_a, stream_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pipe_r, pipe_w = os.pipe()
    good = Rendezvous()
    fd, inode = good.environment()[ENVIRONMENT].split(":")
    cases = {
        "empty": ("", ()), "text": ("abc", ()), "no inode": (fd, ()), "empty inode": (f"{fd}:", ()),
        "no fd": (f":{inode}", ()), "negative": (f"-{fd}:{inode}", ()), "blank": (f" {fd}:{inode}", ()),
        "trailing": (f"{fd}:{inode}x", ()), "huge fd": (f"99999999999999999999:{inode}", ()),
        "huge inode": (f"{fd}:99999999999999999999999", ()), "closed fd": (f"{fd}:{inode}", ()),
        "wrong inode": (f"{fd}:{int(inode) + 1}", (int(fd),)),
        "stdin": (f"0:{os.fstat(0).st_ino}", ()),
        "a pipe": (f"{pipe_r}:{os.fstat(pipe_r).st_ino}", (pipe_r,)),
        "a stream socket": (f"{stream_b.fileno()}:{os.fstat(stream_b.fileno()).st_ino}", (stream_b.fileno(),)),
    }
    return cases, [stream_a, stream_b, good], [pipe_r, pipe_w]


def test_stale_and_foreign_values_are_ignored():
    cases, sockets, pipes = _bad_values()
    try:
        for name, (value, fds) in cases.items():
            # Were any of them taken for a rendezvous, its load would wait a minute.
            child = start({ENVIRONMENT: value, "USDTKIT_RENDEZVOUS_TIMEOUT": "60"}, fds)
            took, loaded, before, after = report(child)
            assert took < 1 and loaded and after == before, name
    finally:
        for sock in sockets:
            sock.close()
        for fd in pipes:
            os.close(fd)


def test_malformed_messages_release_their_sender(rendezvous):
    sender = socket.socket(fileno=os.dup(rendezvous.child_fd))
    rendezvous.handed_over()
    messages = [b"hello", b"usdtkit-rendezvous 1\nbad name\n1\n2\n3\n/x\n",
                b"usdtkit-rendezvous 1\np\n1\n\xd9\xa1\n3\n/x\n", b"usdtkit-rendezvous 1\np\n1\n2\n-3\n/x\n",
                b"usdtkit-rendezvous 2\np\n1\n2\n3\n/x\n", b"usdtkit-rendezvous 1\np\n1\n2\n3\n/x\nextra",
                b"usdtkit-rendezvous 1\np\n1\n2\n/x\n"]
    try:
        for message in messages:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sender.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
            theirs.close()
            assert rendezvous.receive(timeout=5) is None, message
            mine.settimeout(5)
            assert mine.recv(1) == b"", message  # released: its reply socket was closed
            mine.close()
        sender.send(b"usdtkit-rendezvous 1\np\n1\n2\n3\n/x\n")  # well-formed, but nothing to answer on
        assert rendezvous.receive(timeout=5) is None
    finally:
        sender.close()
