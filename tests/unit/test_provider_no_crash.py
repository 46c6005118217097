"""No use of the provider API crashes the interpreter.

Every path that could reach unmapped memory: enabled views kept after unload, close, reload or
garbage collection of the provider; fire functions kept alone; arbitrary Python code (a profiler
hook) running between reading a probe's site and calling it, collecting the provider or closing it
from another thread; threads reading views while another reloads; a daemon thread loading or reading
while the interpreter exits; fork.  Each runs in a fresh interpreter, so a crash fails the test with
the signal instead of killing pytest."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("runtime_dir")


def survives(code: str, *, fast_fire: bool = True, timeout: float = 120) -> str:
    """Run ``code`` in a fresh interpreter; fail if it dies by a signal or fails; return stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if not fast_fire:
        env["USDTKIT_NO_FAST_FIRE"] = "1"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=timeout, env=env)
    if result.returncode < 0:
        pytest.fail(f"killed by {signal.Signals(-result.returncode).name}: {result.stderr[-2000:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


MODES = pytest.mark.parametrize("memfd", [False, True], ids=["file", "memfd"])


@MODES
@pytest.mark.parametrize("end", ["unload", "close", "collect", "reload"])
def test_enabled_view_kept_after_the_object_goes(memfd, end):
    out = survives(f"""
        import gc
        from usdtkit.provider import Provider
        p = Provider("kept", memfd={memfd})
        a = p.probe("a", int)
        p.load()
        a.enabled.value = 2           # as two attached tracers
        view = a.enabled
        if "{end}" == "unload":
            p.unload()
        elif "{end}" == "close":
            p.close()
        elif "{end}" == "collect":
            del p, a
            gc.collect()
        else:
            p.probe("b", str)
            p.load()                  # a reload maps a new object
        print(bool(view), int(view), view == 2, repr(view))
        view.value = 0
        print(int(view))
        """)
    assert out.splitlines() == ["True 2 True <Semaphore enabled=True count=2>", "0"]


@MODES
def test_probes_fire_harmlessly_after_unload_and_close(memfd):
    out = survives(f"""
        from usdtkit.provider import Provider
        p = Provider("after", memfd={memfd})
        a = p.probe("a", int, str)
        span = p.span("work")
        @p.traced()
        def handler(x):
            return x * 2
        p.load()
        a.enabled.value = 1
        fire = a.fire
        p.unload()
        a(1, "x"); fire(2, "y"); handler(3)
        with span():
            pass
        p.load()
        p.close()
        a(1, "x"); fire(2, "y")
        with span():
            pass
        print(handler(4), a.loaded, bool(a.enabled))
        """)
    assert out.split() == ["8", "False", "False"]


@MODES
@pytest.mark.parametrize("fast_fire", [True, False], ids=["c-path", "ctypes-path"])
def test_fire_function_kept_alone_while_a_profiler_collects_the_provider(memfd, fast_fire):
    """The provider is garbage once only ``fire`` is kept; a profiler hook runs Python code (here a
    collection) after the fire function read the site's address and before the C call."""
    out = survives(f"""
        import gc, sys
        from usdtkit.provider import Provider
        p = Provider("alone", memfd={memfd})
        a = p.probe("a", int)
        p.load()
        a.enabled.value = 1
        fire = a.fire
        del p, a
        def hook(frame, event, arg):
            if event == "c_call" and frame.f_code.co_name == "fire":
                sys.setprofile(None)
                gc.collect()
        sys.setprofile(hook)
        fire(1)
        sys.setprofile(None)
        fire(2)
        print("ok")
        """, fast_fire=fast_fire)
    assert out.split() == ["ok"]


@MODES
def test_close_from_another_thread_between_reading_the_site_and_calling_it(memfd):
    out = survives(f"""
        import sys, threading
        from usdtkit.provider import Provider
        p = Provider("raced", memfd={memfd})
        a = p.probe("a", int)
        p.load()
        a.enabled.value = 1
        def hook(frame, event, arg):
            if event == "c_call" and frame.f_code.co_name == "fire":
                sys.setprofile(None)
                closer = threading.Thread(target=p.close)
                closer.start()
                closer.join()
        sys.setprofile(hook)
        a(1)
        sys.setprofile(None)
        a(2)
        print(p.closed)
        """)
    assert out.split() == ["True"]


def test_threads_reading_views_while_another_reloads():
    out = survives("""
        import sys, threading
        from usdtkit.provider import Provider
        sys.setswitchinterval(1e-6)   # switch threads as often as possible
        p = Provider("viewrace", memfd=True)
        probes = [p.probe(f"p{i}", int) for i in range(4)]
        p.load()
        stop = False
        def reader():
            seen = 0
            while not stop:
                for probe in probes:
                    view = probe.enabled
                    seen += int(view) + bool(view) + (view == 0)
        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        for i in range(300):
            p.unload()
            p.load()
        stop = True
        for t in threads:
            t.join()
        print("ok")
        """)
    assert out.split() == ["ok"]


def test_interpreter_exit_while_a_daemon_thread_loads():
    """At exit the provider is destroyed while a daemon thread is inside the native load (which
    runs without the GIL)."""
    for attempt in range(5):
        survives("""
            import itertools, threading, time
            from usdtkit.provider import Provider
            p = Provider("exiting")
            p.probe("a", int)
            n = itertools.count()
            def churn():
                while True:
                    p.probe(f"p{next(n)}", int, str)
                    p.load()
            threading.Thread(target=churn, daemon=True).start()
            time.sleep(0.2)
            """)


def test_interpreter_exit_while_a_daemon_thread_reads_a_view():
    """The exit hook that destroys providers runs before the program's own earlier-registered
    hooks; while those run, the daemon thread still gets the GIL and reads its view."""
    for attempt in range(3):
        survives("""
            import atexit, threading, time
            atexit.register(time.sleep, 0.05)   # runs after usdtkit's exit hook
            from usdtkit.provider import Provider
            p = Provider("exitview", memfd=True)
            a = p.probe("a", int)
            p.load()
            def read():
                view = a.enabled
                while True:
                    bool(view)
            threading.Thread(target=read, daemon=True).start()
            time.sleep(0.05)
            """)


@MODES
def test_fork_keeps_views_and_firing_safe_in_both_processes(memfd):
    out = survives(f"""
        import os, threading
        from usdtkit.provider import Provider
        p = Provider("forked", memfd={memfd})
        a = p.probe("a", int)
        p.load()
        a.enabled.value = 1
        view = a.enabled
        stop = False
        def churn():
            while not stop:
                p.unload()
                p.load()
        t = threading.Thread(target=churn)
        t.start()
        signalled = 0
        for i in range(100):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    a(1)
                    bool(view)
                    p.close()
                    a(2)
                    code = 0 if int(view) in (0, 1) else 3
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            signalled += os.WIFSIGNALED(status) or os.waitstatus_to_exitcode(status) != 0
        stop = True
        t.join()
        p.close()
        print(signalled, int(view))
        """)
    assert out.split() == ["0", "1"]


@MODES
def test_a_kept_view_keeps_the_object_mapped_only_until_it_is_dropped(memfd):
    out = survives(f"""
        import gc, os
        from usdtkit.provider import Provider
        def mapped():
            return marker in open("/proc/self/maps").read()
        fds = len(os.listdir("/proc/self/fd"))
        p = Provider("pinned", memfd={memfd})
        a = p.probe("a", int)
        p.load()
        marker = "/memfd:usdtkit-pinned" if {memfd} else p.path
        view = a.enabled
        p.close()
        print(mapped(), bool(a.enabled), int(view))
        del view
        gc.collect()
        print(mapped(), len(os.listdir("/proc/self/fd")) - fds)
        """)
    assert out.splitlines() == ["True False 0", "False 0"]
