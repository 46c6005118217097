"""PID targets: mapped objects, load bias checked against live memory, memfd, deleted, containers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from usdtkit.elf import find_symbol, process_objects, read_usdt_probes
from usdtkit.errors import NoSuchProcess

PYTHON = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else sys.executable
LIBSTDCXX = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
MEMFD = r"""
import ctypes, os, sys, time
fd = os.memfd_create("usdtkit-test", 0)
data = open(sys.argv[1], "rb").read()
view = memoryview(data)
while view:
    view = view[os.write(fd, view):]
lib = ctypes.CDLL(f"/proc/self/fd/{fd}")
print("ready", flush=True)
time.sleep(60)
"""
DELETED = r"""
import ctypes, os, sys, time
lib = ctypes.CDLL(sys.argv[1])
os.unlink(sys.argv[1])
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def spawn():
    procs = []

    def start(argv, **kwargs):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, **kwargs)
        procs.append(proc)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            pytest.fail(f"child did not start: {line!r}")
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (map_files, other namespaces)")


def by_path(objects):
    return {o.path: o for o in objects}


def test_objects_of_a_python_process(spawn):
    proc = spawn([PYTHON, "-c", SLEEPER])
    objects = process_objects(proc.pid)
    paths = by_path(objects)
    exe = os.path.realpath(PYTHON)
    assert exe in paths
    libc = next(o for o in objects if os.path.basename(o.path).startswith("libc.so"))
    assert not libc.deleted and not libc.memfd and libc.pid == proc.pid
    assert os.path.samefile(libc.open_path, libc.path)
    # The lowest mapping of libc starts at file offset 0; libc is PIC, so the bias is that address.
    assert libc.offset == 0 and libc.load_bias == libc.start
    assert all(o.start < o.end for o in objects) and objects == sorted(objects, key=lambda o: o.start)
    # Nothing that is not a file-backed ELF object.
    assert not any(o.path.startswith("[") for o in objects)
    maps = open(f"/proc/{proc.pid}/maps").read()
    assert all(o.path in maps for o in objects)


def _read_memory(pid: int, address: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(address)
        return mem.read(size)


def test_load_bias_points_at_the_code_in_memory(spawn):
    _need_root()
    proc = spawn([PYTHON, "-c", SLEEPER])
    objects = process_objects(proc.pid)
    checked = 0
    for obj in objects:
        name = os.path.basename(obj.path)
        symbol = {"libc.so.6": "malloc", os.path.basename(os.path.realpath(PYTHON)): "PyObject_GetAttr"}.get(name)
        if symbol is None:
            continue
        f = find_symbol(obj.open_path, symbol)
        with open(obj.open_path, "rb") as fh:
            fh.seek(f.file_offset)
            expected = fh.read(32)
        assert _read_memory(proc.pid, obj.runtime_address(f.address), 32) == expected, (obj, f)
        checked += 1
    assert checked == 2


@pytest.mark.skipif(not os.path.exists(LIBSTDCXX), reason="libstdc++ not installed")
def test_memfd_backed_object(spawn):
    _need_root()
    proc = spawn([PYTHON, "-c", MEMFD, LIBSTDCXX])
    memfds = [o for o in process_objects(proc.pid) if o.memfd]
    assert len(memfds) == 1
    obj = memfds[0]
    assert obj.path == "/memfd:usdtkit-test" and obj.deleted
    assert obj.open_path.startswith(f"/proc/{proc.pid}/")
    assert [p.qualified_name for p in read_usdt_probes(obj.open_path)] == [
        p.qualified_name for p in read_usdt_probes(LIBSTDCXX)
    ]
    assert obj.load_bias == obj.start


@pytest.mark.skipif(not os.path.exists(LIBSTDCXX), reason="libstdc++ not installed")
def test_memfd_through_proc_fd_when_map_files_is_unusable(spawn, monkeypatch):
    from usdtkit.elf import process as process_module

    proc = spawn([PYTHON, "-c", MEMFD, LIBSTDCXX])
    real_inode = process_module._inode
    monkeypatch.setattr(process_module, "_inode",
                        lambda p: None if "/map_files/" in p else real_inode(p))
    (obj,) = [o for o in process_objects(proc.pid) if o.memfd]
    assert obj.open_path.startswith(f"/proc/{proc.pid}/fd/")
    assert len(read_usdt_probes(obj.open_path)) == 3


@pytest.mark.skipif(not os.path.exists(LIBSTDCXX), reason="libstdc++ not installed")
def test_deleted_library(spawn, tmp_path):
    _need_root()
    copy = tmp_path / "libgone.so"
    shutil.copy(LIBSTDCXX, copy)
    proc = spawn([PYTHON, "-c", DELETED, str(copy)])
    assert not copy.exists()
    (obj,) = [o for o in process_objects(proc.pid) if o.path == str(copy)]
    assert obj.deleted and not obj.memfd
    assert "/map_files/" in obj.open_path
    assert len(read_usdt_probes(obj.open_path)) == 3


@pytest.mark.skipif(not os.path.exists(LIBSTDCXX), reason="libstdc++ not installed")
def test_object_only_visible_in_the_process_mount_namespace(spawn, tmp_path):
    _need_root()
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    hidden = tmp_path / "ns"
    hidden.mkdir()
    lib = hidden / "libns.so"
    script = (
        f"mount -t tmpfs tmpfs {hidden} && cp {LIBSTDCXX} {lib} && "
        f"exec {PYTHON} -c 'import ctypes, sys, time; ctypes.CDLL(sys.argv[1]); print(\"ready\", flush=True); "
        f"time.sleep(60)' {lib}"
    )
    check = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if check.returncode != 0:
        pytest.skip(f"cannot create a mount namespace here: {check.stderr.decode().strip()}")
    proc = spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    assert not lib.exists()  # not in our mount namespace
    (obj,) = [o for o in process_objects(proc.pid) if o.path == str(lib)]
    assert obj.open_path == f"/proc/{proc.pid}/root{lib}" and not obj.deleted
    assert len(read_usdt_probes(obj.open_path)) == 3


def test_vanished_and_invalid_pids():
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(NoSuchProcess, match=f"pid {proc.pid}: no such process"):
        process_objects(proc.pid)
    for bad in (0, -5):
        with pytest.raises(NoSuchProcess):
            process_objects(bad)


def test_kernel_thread_has_no_objects():
    try:
        comm = Path("/proc/2/comm").read_text().strip()
    except OSError:
        comm = ""
    if comm != "kthreadd":
        pytest.skip("no kthreadd visible (PID namespace)")
    assert process_objects(2) == []
