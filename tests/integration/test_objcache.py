"""The compiled-object cache on real probes: the first run of a command compiles with bcc and stores what
it compiled; the same command again loads it with raw bpf(2) calls, with ``import bcc`` made to fail,
and must report exactly what the bcc run reported.  Damaged, foreign or stale entries are misses that
compile again and replace the entry; nothing a cached program made outlives it."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from usdtkit.bpf import objcache

from test_lifecycle import assert_no_new_programs, bpf_fds_of_this_process, open_fds, programs_before  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]

#: Imported first by every Python started with the shim on its path: ``import bcc`` then fails.
_NO_BCC = """
import sys

class _NoBcc:
    def find_spec(self, name, path=None, target=None):
        if name == "bcc" or name.startswith("bcc."):
            raise ImportError("bcc is blocked in this test")
        return None

sys.meta_path.insert(0, _NoBcc())
"""


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("hello") / "hello_usdt"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(ROOT / "demo_apps" / "hello_usdt.c")], check=True)
    return str(out)


@pytest.fixture
def cache_home(tmp_path: Path) -> Path:
    home = tmp_path / "cache"
    home.mkdir(mode=0o700)
    return home


@pytest.fixture(scope="module")
def no_bcc(tmp_path_factory: pytest.TempPathFactory) -> str:
    shim = tmp_path_factory.mktemp("no_bcc")
    (shim / "sitecustomize.py").write_text(_NO_BCC)
    return str(shim)


def usdtkit(cache_home: Path, *args: str, block_bcc: Optional[str] = None,
            env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    path = [block_bcc] if block_bcc else []
    environ = dict(os.environ, XDG_CACHE_HOME=str(cache_home), PYTHONPATH=os.pathsep.join(path + [str(ROOT)]))
    environ.pop("USDTKIT_NO_OBJCACHE", None)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", *args], capture_output=True, text=True,
                          timeout=120, env=environ)


def entries(cache_home: Path) -> List[Path]:
    folder = cache_home / "usdtkit" / "bpf"
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def test_the_shim_blocks_bcc(no_bcc: str):
    blocked = subprocess.run([sys.executable, "-c", "import bcc"], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=no_bcc))
    assert blocked.returncode != 0 and "bcc is blocked" in blocked.stderr


def _json_lines(out: str) -> List[dict]:
    """The JSON documents of the output (the target's own output may follow one on its line)."""
    decoder = json.JSONDecoder()
    return [decoder.raw_decode(line)[0] for line in out.splitlines() if line.startswith("{")]


def _counts(out: str) -> object:
    return [(c["key"], c["count"]) for c in _json_lines(out)[-1]["counts"]["counts"]]


def _hist(out: str) -> object:
    return [[(b["low"], b["count"]) for b in h["buckets"]] for h in _json_lines(out)[-1]["histograms"]]


def _latency_total(out: str) -> object:
    """Per histogram, what it is split by (a value kept from the start) and how many pairs it holds."""
    return [(h.get("by"), sum(b["count"] for b in h["buckets"])) for h in _json_lines(out)[-1]["histograms"]]


def _events(out: str) -> object:
    return [(e["probe"], e["args"]) for e in _json_lines(out)]


def _follow(out: str) -> object:
    return sorted(c["count"] for c in _json_lines(out)[-1]["counts"]["counts"])


def _stacks(out: str) -> object:
    return sorted((c["key"][-1].split(";")[-1], c["count"]) for c in _json_lines(out)[-1]["counts"]["counts"])


FORMS = {
    # name: (arguments with HELLO for the target, what must be the same from bcc and from the cache)
    "count": (["count", "--json", "--by", "arg0", "-c", "HELLO 6", "usdt::hello:tick"], _counts),
    "shared": (["count", "--json", "-c", "HELLO 4", "usdt::hello:greet", "usdt::hello:tick"], _counts),
    "hist": (["hist", "--json", "-v", "arg1", "-c", "HELLO 9", "usdt::hello:tick"], _hist),
    "latency": (["latency", "--json", "--key", "arg0", "-c", "HELLO 4", "usdt::hello:greet", "usdt::hello:tick"],
                _latency_total),
    "latency by start value": (["latency", "--json", "-k", "arg0", "--by", "start.str(arg1)", "-c", "HELLO 4 again",
                                "usdt::hello:greet", "usdt::hello:tick"], _latency_total),
    "events": (["trace", "--json", "-s", "arg1", "-c", "HELLO 3 cached", "usdt::hello:greet"], _events),
    "stacks": (["count", "--json", "--by", "ustack", "-c", "HELLO 3", "usdt::hello:tick"], _stacks),
    "follow": (["count", "--json", "-F", "--by", "pid", "-c", "sh -c 'HELLO 2; HELLO 3'", "usdt:HELLO:hello:tick"],
               _follow),
}


@pytest.mark.bpf
@pytest.mark.parametrize("form, variant", [(form, "uprobe_multi") for form in sorted(FORMS)]
                         + [("count", "perf"), ("shared", "perf"),  # perf events, and perf links with cookies
                            ("events", "python reader")])  # records read in Python, not by the C reader
def test_every_form_from_the_cache_reports_what_bcc_reported(form, variant, hello, cache_home, no_bcc):
    args, result_of = FORMS[form]
    args = [a.replace("HELLO", hello) for a in args]
    env = {"perf": {"USDTKIT_NO_UPROBE_MULTI": "1"}, "python reader": {"USDTKIT_NO_NATIVE_EVENTS": "1"}}.get(variant, {})
    compiled = usdtkit(cache_home, *args, env=env)
    assert compiled.returncode == 0, compiled.stderr
    assert len(entries(cache_home)) == 1
    cached = usdtkit(cache_home, *args, block_bcc=no_bcc, env=env)
    assert cached.returncode == 0, cached.stderr
    assert result_of(cached.stdout) == result_of(compiled.stdout)
    assert result_of(cached.stdout), compiled.stdout  # something was counted at all


def _count_tick(cache_home: Path, hello: str, block_bcc: Optional[str] = None, n: int = 5) -> subprocess.CompletedProcess:
    return usdtkit(cache_home, "count", "--json", "-c", f"{hello} {n}", "usdt::hello:tick", block_bcc=block_bcc)


def _total(result: subprocess.CompletedProcess) -> int:
    assert result.returncode == 0, result.stderr
    return sum(c["count"] for c in _json_lines(result.stdout)[-1]["counts"]["counts"])


@pytest.mark.bpf
@pytest.mark.parametrize("damage", ["truncated", "bad checksum", "foreign owner", "group writable",
                                    "world readable", "symlink", "other kernel"])
def test_a_bad_entry_is_a_miss_that_compiles_and_replaces_it(damage, hello, cache_home, no_bcc, tmp_path):
    assert _total(_count_tick(cache_home, hello)) == 5
    (entry,) = entries(cache_home)
    good = entry.read_bytes()
    if damage == "truncated":
        entry.write_bytes(good[:len(good) // 2])
    elif damage == "bad checksum":
        entry.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    elif damage == "foreign owner":
        os.chown(entry, 65534, 65534)
    elif damage == "group writable":
        entry.chmod(0o620)
    elif damage == "world readable":
        entry.chmod(0o604)
    elif damage == "symlink":
        elsewhere = tmp_path / "planted"
        elsewhere.write_bytes(good)
        elsewhere.chmod(0o600)
        entry.unlink()
        entry.symlink_to(elsewhere)
    elif damage == "other kernel":  # an entry stored for another key under this name
        entry.write_bytes(good.replace(entry.name.encode(), b"0" * len(entry.name)))
    # Without bcc, a miss cannot compile: the command fails, it does not crash or use the entry.
    refused = _count_tick(cache_home, hello, block_bcc=no_bcc)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    assert "cannot import bcc" in refused.stderr
    assert _total(_count_tick(cache_home, hello)) == 5  # compiled again...
    (entry,) = entries(cache_home)
    st = entry.lstat()
    assert entry.read_bytes() == good and st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o600
    assert _total(_count_tick(cache_home, hello, block_bcc=no_bcc)) == 5  # ...and served from the cache


def test_stale_keys_kernel_bcc_and_text(monkeypatch):
    text = "int f(void *ctx) { return 0; }"
    key = objcache.cache_key(text)
    assert key is not None and objcache.cache_key(text) == key
    assert objcache.cache_key(text + " ") != key
    assert objcache.cache_key(text, ["-DX"]) != key
    real_uname = os.uname()

    class Upgraded:
        release, version, machine = real_uname.release + "-next", real_uname.version, real_uname.machine

    monkeypatch.setattr(objcache.os, "uname", lambda: Upgraded)
    assert objcache.cache_key(text) != key
    monkeypatch.undo()
    monkeypatch.setattr(objcache, "bcc_identity", lambda: "0.27.0 /lib/libbcc.so.0.27.0 1 2")
    assert objcache.cache_key(text) != key
    monkeypatch.setattr(objcache, "bcc_identity", lambda: None)
    assert objcache.cache_key(text) is None  # bcc not identified: nothing is cached


@pytest.mark.bpf
def test_cache_off_compiles_every_time(hello, cache_home, no_bcc):
    assert _total(_count_tick(cache_home, hello)) == 5
    off = usdtkit(cache_home, "count", "-c", f"{hello} 5", "usdt::hello:tick", block_bcc=no_bcc,
                  env={"USDTKIT_NO_OBJCACHE": "1"})
    assert off.returncode != 0 and "cannot import bcc" in off.stderr


@pytest.mark.bpf
def test_a_cached_program_leaves_nothing_behind(hello, cache_home, monkeypatch, programs_before):  # noqa: F811
    from usdtkit.bpf.caching_backend import CachingBackend
    from usdtkit.tracing.api import trace

    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.delenv("USDTKIT_NO_OBJCACHE", raising=False)
    results = []
    for _ in range(2):
        fds, bpf_fds = open_fds(), bpf_fds_of_this_process()
        backend = CachingBackend()
        with trace("usdt::hello:greet", "usdt::hello:tick", command=[hello, "3"], backend=backend,
                   count_by=["arg0"], stacks=False) as session:
            session.run(duration=20)
            results.append((backend.hit, dict(session.counts()), session.stats()["hello:tick"].hits))
        assert bpf_fds_of_this_process() == bpf_fds and open_fds() == fds
        time.sleep(0.05)
    assert [hit for hit, _, _ in results] == [False, True]
    assert results[0][1:] == results[1][1:] and results[1][2] == 3
    assert_no_new_programs(programs_before)


@pytest.mark.bpf
def test_doctor_shows_the_cache(hello, cache_home):
    assert _total(_count_tick(cache_home, hello)) == 5
    on = usdtkit(cache_home, "doctor", "--no-self-test")
    assert f"OK    object cache        {cache_home}/usdtkit/bpf: 1 compiled program;" in on.stdout, on.stdout
    off = usdtkit(cache_home, "doctor", "--no-self-test", env={"USDTKIT_NO_OBJCACHE": "1"})
    assert "OK    object cache        off (USDTKIT_NO_OBJCACHE is set)" in off.stdout, off.stdout


@pytest.mark.bpf
def test_another_cgroup_is_a_hit_that_keeps_only_its_own_hits(hello, cache_home, no_bcc, cgroup):
    """The cgroup id is written into a map after loading, not into the C: tracing another cgroup is the
    same compiled program, and each run keeps the hits of its own cgroup only."""
    other = os.path.join(cgroup, "other")
    os.mkdir(other)
    inside, elsewhere = (subprocess.Popen([hello, "3000"], stdout=subprocess.DEVNULL) for _ in range(2))
    try:
        for process, folder in ((inside, cgroup), (elsewhere, other)):
            with open(os.path.join(folder, "cgroup.procs"), "w") as handle:
                handle.write(str(process.pid))
        seen = []
        for folder, block in ((cgroup, None), (other, no_bcc)):
            result = usdtkit(cache_home, "count", "--json", "--cgroup", folder, "--by", "pid", "-d", "0.5",
                             f"usdt:{hello}:hello:tick", block_bcc=block)
            assert result.returncode == 0, result.stderr
            seen.append({c["key"][1] for c in _json_lines(result.stdout)[-1]["counts"]["counts"]})
        assert seen == [{inside.pid}, {elsewhere.pid}]
        assert len(entries(cache_home)) == 1
    finally:
        for process in (inside, elsewhere):
            process.kill()
            process.wait()
        deadline = time.monotonic() + 5  # a killed process leaves its cgroup a moment after it is reaped
        while os.path.isdir(other) and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                os.rmdir(other)


@pytest.mark.bpf
def test_an_entry_the_kernel_refuses_is_compiled_again(hello, cache_home):
    """An entry whole and ours but holding a program the verifier refuses (here: returning without
    setting r0) is a miss too: compiled again and replaced, before anything is attached."""
    assert _total(_count_tick(cache_home, hello)) == 5
    (entry,) = entries(cache_home)
    good = entry.read_bytes()
    obj = objcache.decode(good, entry.name)
    assert obj is not None
    exit_only = bytes([0x95, 0, 0, 0, 0, 0, 0, 0])  # BPF_JMP|BPF_EXIT
    broken = obj._replace(functions={name: f._replace(insns=exit_only, map_refs=())
                                     for name, f in obj.functions.items()})
    entry.write_bytes(objcache.encode(entry.name, broken))
    assert _total(_count_tick(cache_home, hello)) == 5
    assert entry.read_bytes() == good
