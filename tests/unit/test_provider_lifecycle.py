"""Provider lifecycle across processes and threads: fork, concurrent firing (also against unload),
unload at interpreter exit, 1,000 create/load/unload/destroy cycles without leaks, and the PyPI
``stapsdt`` package running unmodified on top of our library."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from usdtkit import _native
from usdtkit.provider import Provider

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("runtime_dir")  # every provider here writes to a private folder


def run_python(code: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (so a crash fails the test instead of killing pytest)."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def test_provider_loaded_before_fork_works_in_the_child():
    with Provider("forky") as provider:
        probe = provider.probe("tick", int, str)
        provider.load()
        probe.enabled.value = 1  # traced at fork time: the child's copy of the counter says so too
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report, fire for real, reload, exit without running atexit handlers
            status = 1
            try:
                ok = bool(probe.enabled) and probe.loaded
                probe(os.getpid(), "from the child")
                late = provider.probe("child_only", int)
                provider.load()  # reload in the child only
                probe(1, "after reload")
                late(2)
                provider.close()
                status = 0 if ok else 3
            finally:
                os.write(write, str(status).encode())
                os._exit(status)
        os.close(write)
        _, wait_status = os.waitpid(pid, 0)
        child_report = os.read(read, 16)
        os.close(read)
        assert child_report == b"0" and os.waitstatus_to_exitcode(wait_status) == 0
        # The parent is untouched by the child's reload and close.
        assert probe.loaded and probe.enabled and "child_only" not in provider.probes
        probe(os.getpid(), "from the parent")
        probe.enabled.value = 0


def test_fork_from_a_thread_holding_the_provider_lock_does_not_deadlock_the_child():
    result = run_python(
        """
        import os, threading
        from usdtkit.provider import Provider
        p = Provider("lockfork")
        p.probe("a", int)
        p.load()
        held, release = threading.Event(), threading.Event()
        def hold():
            with p._lock:
                held.set()
                release.wait()
        t = threading.Thread(target=hold)
        t.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            p.probe("b", int)   # needs the provider lock: must not hang in the child
            p.load()
            os._exit(0)
        release.set()
        t.join()
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "child 0"


def test_many_threads_fire_concurrently():
    with Provider("threads") as provider:
        probe = provider.probe("hit", int, str, bool)
        provider.load()
        probe.enabled.value = 1
        errors = []

        def worker(n: int) -> None:
            try:
                for i in range(5000):
                    probe(i, f"thread {n}", i % 2 == 0)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        probe.enabled.value = 0
        assert errors == []


def test_unloading_while_other_threads_fire_never_crashes():
    """Threads hammer probes (enabled path, real native calls) while the main thread unloads and
    reloads 300 times, then exits with the threads still running (atexit unload)."""
    result = run_python(
        """
        import threading
        from usdtkit.provider import Provider
        p = Provider("race", memfd=True)  # a new mapping per load: stale pointers would fault
        a = p.probe("a", int, str)
        b = p.probe("b")
        p.load()
        stop = False
        def fire():
            n = 0
            while not stop:
                if a.enabled:
                    a(n, "x")
                b()
                n += 1
        def force_enabled():
            while not stop:
                if a.loaded:
                    try:
                        a.enabled.value = 1
                    except Exception:
                        pass
        threads = [threading.Thread(target=fire, daemon=True) for _ in range(4)]
        threads.append(threading.Thread(target=force_enabled, daemon=True))
        for t in threads:
            t.start()
        for i in range(300):
            p.unload()
            p.load()
        print("cycles done")
        """,
        timeout=120,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "cycles done"


@pytest.mark.parametrize("memfd", [False, True], ids=["file", "memfd"])
def test_providers_are_unloaded_at_interpreter_exit(memfd):
    result = run_python(
        f"""
        import atexit, os
        state = {{}}
        def check():  # registered first, so it runs after usdtkit's exit hook
            maps = open("/proc/self/maps").read()
            print("mapped at exit:", state["marker"] in maps)
            print("fd open at exit:", os.path.exists(state["fd"]) if state["fd"] else None)
        atexit.register(check)
        from usdtkit.provider import Provider
        p = Provider("exiting", memfd={memfd})
        probe = p.probe("a", int)
        p.load()
        fd = p._native.handle.contents._memfd
        state["fd"] = f"/proc/self/fd/{{fd}}" if fd >= 0 else None
        state["marker"] = "memfd:usdtkit-exiting" if fd >= 0 else p.path
        print("mapped before exit:", state["marker"] in open("/proc/self/maps").read())
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "mapped before exit: True"
    assert lines[1] == "mapped at exit: False"
    assert lines[2] == ("fd open at exit: False" if memfd else "fd open at exit: None")


@pytest.mark.parametrize("memfd", [False, True], ids=["file", "memfd"])
def test_thousand_python_cycles_leak_no_fd_mapping_or_file(memfd, footprint):
    def cycle(i: int) -> None:
        provider = Provider("pycycle", memfd=memfd)
        probe = provider.probe("tick", int, str)
        provider.load()
        probe.enabled.value = 1
        probe(i, "cycle")
        probe.enabled.value = 0
        provider.unload()
        provider.close()

    cycle(0)
    fds, maps, files = footprint()
    for i in range(1000):
        cycle(i)
    after_fds, after_maps, after_files = footprint()
    assert after_fds == fds
    assert after_maps == maps
    assert after_files == files == []  # close() removed each file: no other process mapped it


def test_garbage_collected_provider_is_destroyed():
    result = run_python(
        """
        import gc
        from usdtkit.provider import Provider
        def make():
            p = Provider("collected", memfd=True)
            p.probe("a", int)
            p.load()
        make()
        gc.collect()
        print("memfd:usdtkit-collected" in open("/proc/self/maps").read())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------- the PyPI stapsdt package


def test_import_usdtkit_then_stapsdt_uses_our_library():
    result = run_python(
        """
        import usdtkit, stapsdt
        lib = usdtkit._native.library_path()
        maps = [l.split()[-1] for l in open("/proc/self/maps") if "libstapsdt" in l]
        print(sorted(set(maps)) == [lib])
        print(stapsdt.stapsdt_lib._name)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["True", "libstapsdt.so"]


def test_stapsdt_readme_example_runs_and_its_probe_is_real():
    result = run_python(
        """
        import ctypes, subprocess
        import usdtkit
        from stapsdt import Provider, ArgTypes

        provider = Provider("pythonapp")
        probe = provider.add_probe("firstProbe", ArgTypes.uint64, ArgTypes.int32)
        print("load", provider.load())            # stapsdt returns bool(0): False means success
        print("fire untraced", probe.fire("My little probe", 42))

        lib = usdtkit._native.load_library()
        lib.probeSemaphore.restype = ctypes.c_void_p
        lib.probeSemaphore.argtypes = [ctypes.c_void_p]
        sem = ctypes.c_uint16.from_address(lib.probeSemaphore(probe._probe))
        sem.value = 1                              # as an attached tracer would
        print("enabled", probe.is_enabled)
        print("fire traced", probe.fire("My little probe", 42))
        sem.value = 0

        path = ctypes.cast(provider._provider + 40, ctypes.POINTER(ctypes.c_char_p))[0].decode()
        notes = subprocess.run(["readelf", "-n", path], capture_output=True, text=True).stdout
        print("note", "Provider: pythonapp" in notes and "Name: firstProbe" in notes
              and "Arguments: 8@%rdi -4@%esi" in notes)
        print("unload", provider.unload())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "load False", "fire untraced False", "enabled True", "fire traced True", "note True",
        "unload False"]


def test_library_path_and_load_library():
    path = _native.library_path()
    assert os.path.isabs(path) and path.endswith("usdtkit/_native/libstapsdt.so")
    assert _native.load_library() is _native.load_library()
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True).stdout
    assert "Library soname: [libstapsdt.so]" in out
