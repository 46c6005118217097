"""Runtime files stay bounded: ``close()`` removes the provider's file unless another process maps
it, and loads remove the files no live process maps (left by killed processes, or by definitions no
longer used), touching nothing that is not ours.  A loader never loses its file to a concurrent
collection or close."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import List

from usdtkit.provider import Provider

ROOT = Path(__file__).resolve().parents[2]
HEX = "0123456789abcdef"


def objects(runtime_dir: Path) -> List[str]:
    return sorted(p.name for p in runtime_dir.iterdir() if p.name.endswith(".so"))


def load_and_kill(names: List[str]) -> None:
    """For each name, a forked process loads a provider of that name and is SIGKILLed: it never
    closes the provider, so its file stays behind."""
    for name in names:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                provider = Provider(name)
                provider.probe("tick", int)
                provider.load()
                os.write(write, b"y")
                time.sleep(60)
            finally:
                os._exit(1)
        os.close(write)
        assert os.read(read, 1) == b"y"
        os.close(read)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


class Holder:
    """Another live process that maps a provider's file until stopped."""

    def __init__(self, name: str) -> None:
        code = f"""
            import sys
            from usdtkit.provider import Provider
            p = Provider({name!r})
            p.probe("tick", int)
            p.load()
            print(p.path, flush=True)
            sys.stdin.read()
            p.close()
            """
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert self.proc.stdout is not None
        self.path = self.proc.stdout.readline().strip()
        assert self.path, "the holder could not load its provider"

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0


def test_close_removes_the_file(runtime_dir):
    provider = Provider("closing")
    provider.probe("tick", int)
    provider.load()
    path = provider.path
    provider.unload()
    assert os.path.exists(path)  # unload keeps it: a reload of the same probes reuses it
    provider.load()
    provider.close()
    assert not os.path.exists(path) and objects(runtime_dir) == []


def test_a_file_another_live_process_maps_survives_close(runtime_dir):
    holder = Holder("shared")
    try:
        provider = Provider("shared")  # same definition: the same content-named file
        provider.probe("tick", int)
        provider.load()
        assert provider.path == holder.path
        provider.close()
        assert os.path.exists(holder.path)  # the holder still maps it
    finally:
        holder.stop()
    assert not os.path.exists(holder.path)  # the last one out removed it


def test_killed_processes_leave_a_bounded_number_of_files(runtime_dir):
    started = time.monotonic()
    load_and_kill([f"killed{i}" for i in range(200)])
    elapsed = time.monotonic() - started
    survivor = Provider("survivor")
    survivor.probe("tick", int)
    survivor.load()
    try:
        left = objects(runtime_dir)
        assert Path(survivor.path).name in left
        # 200 dead processes, at most 16 files: a load collects once that many have accumulated.
        assert len(left) <= 16, (len(left), left)
        print(f"200 load+SIGKILL cycles in {elapsed:.2f} s, {len(left)} files left")
    finally:
        survivor.close()


def test_a_collection_removes_only_unmapped_files_of_ours(runtime_dir, tmp_path):
    """Plants, next to files of killed processes, everything a collection must leave alone."""
    runtime_dir.mkdir(mode=0o700)
    holder = Holder("held")
    try:
        old_temp = runtime_dir / f".gone-{HEX}.so.4242.7.tmp"  # a writer killed an hour ago
        old_temp.write_bytes(b"partial")
        os.utime(old_temp, (time.time() - 3600,) * 2)
        # Being written now (its clock a minute ahead, so the test does not depend on its speed).
        new_temp = runtime_dir / f".busy-{HEX}.so.4243.8.tmp"
        new_temp.write_bytes(b"partial")
        os.utime(new_temp, (time.time() + 60,) * 2)
        outside = tmp_path / "outside.so"
        outside.write_bytes(b"not ours to remove")
        link = runtime_dir / f"link-{HEX}.so"
        link.symlink_to(outside)
        directory = runtime_dir / f"dir-{HEX}.so"
        directory.mkdir()
        foreign = [runtime_dir / "notes.txt", runtime_dir / f"bad name-{HEX}.so",
                   runtime_dir / f"short-{HEX[:15]}.so", runtime_dir / f"upper-{HEX.upper()}.so"]
        for path in foreign:
            path.write_bytes(b"someone else's")

        load_and_kill([f"dead{i}" for i in range(40)])
        loader = Provider("loader")
        loader.probe("tick", int)
        loader.load()
        try:
            left = sorted(p.name for p in runtime_dir.iterdir())
            dead = [name for name in left if name.startswith("dead")]
            assert len(dead) < 16, left
            assert not old_temp.exists()
            assert new_temp.exists() and os.path.exists(holder.path) and os.path.exists(loader.path)
            assert link.is_symlink() and outside.read_bytes() == b"not ours to remove"
            assert directory.is_dir() and all(path.exists() for path in foreign)
        finally:
            loader.close()
    finally:
        holder.stop()


def test_no_collection_in_a_directory_others_may_read(runtime_dir):
    """A runtime directory that is not private (here 0755, accepted for loading) is not ours
    alone to clean: files there are never removed."""
    runtime_dir.mkdir(mode=0o700)
    os.chmod(runtime_dir, 0o755)
    load_and_kill([f"kept{i}" for i in range(20)])
    provider = Provider("kept_open")
    provider.probe("tick", int)
    provider.load()
    path = provider.path
    provider.close()
    assert len(objects(runtime_dir)) == 21 and os.path.exists(path)


def test_concurrent_loaders_and_closers_never_lose_their_file(runtime_dir):
    """Processes load, check and close the same definition in a loop while others produce
    garbage: every loaded provider's path must be the very file it maps."""
    code = """
        import os, sys
        from pathlib import Path
        from usdtkit.provider import Provider
        def mapped_inode(path):
            for line in Path("/proc/self/maps").read_text().splitlines():
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5] == path:
                    return int(fields[4])
            return 0
        lost = 0
        for i in range(150):
            name = "contended" if sys.argv[1] == "same" else f"garbage{os.getpid()}_{i}"
            p = Provider(name)
            p.probe("tick", int)
            p.load()
            try:
                if os.stat(p.path).st_ino != mapped_inode(p.path):
                    lost += 1
            except FileNotFoundError:
                lost += 1
            if sys.argv[1] == "same":
                p.close()
            else:
                p.unload()  # its file becomes garbage for the next collection
        print(lost)
        """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), kind], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for kind in ["same", "same", "same", "garbage"]]
    results = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == "0", (out, err[-2000:])


def test_a_large_backlog_is_cleared_a_bounded_batch_per_load(runtime_dir):
    """10,000 leftovers (as an old runtime directory may hold): each load examines at most 4,096
    files, so the backlog goes in a few loads, each of bounded cost."""
    runtime_dir.mkdir(mode=0o700)
    for i in range(10_000):
        (runtime_dir / f"left{i}-{i:016x}.so").write_bytes(b"\x7fELF")
    providers, counts, times = [], [], []
    try:
        for n in range(4):
            provider = Provider(f"batch{n}")
            provider.probe("tick", int)
            started = time.monotonic()
            provider.load()
            times.append(time.monotonic() - started)
            providers.append(provider)
            counts.append(len(objects(runtime_dir)))
        assert counts[0] >= 10_001 - 4096 and counts[1] >= 10_002 - 2 * 4096, counts
        assert counts[-1] == 4, counts  # only the four live providers' files are left
        print(f"backlog per load: {counts}, load times {[round(t * 1e3) for t in times]} ms")
    finally:
        for provider in providers:
            provider.close()
