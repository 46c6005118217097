"""A TraceRequest refuses every option that would have no effect, by name, before any file is read."""
from __future__ import annotations

import pytest

from usdtkit.errors import UsageError
from usdtkit.plan.request import DEFAULT_STRING_SIZE, Target, make_request
from usdtkit.tracing.api import trace

PROBE = "usdt:/nonexistent/app:p:n"  # nothing is resolved: the refusals come first


@pytest.mark.parametrize("options, words", [
    (dict(hist_by="arg1"), "hist_by"),
    (dict(pair_keys=("arg0", "arg0")), "pair_keys"),
    (dict(events=False, strings=["arg1"]), "strings="),
    (dict(events=False, stacks=True), "stacks="),
    (dict(events=False, ring_pages=64), "ring_pages="),
    (dict(string_size=200), "string_size"),
    (dict(events=False, count_by=["arg0"], string_size=200), "string_size"),
])
def test_options_that_would_be_ignored_are_refused(options, words):
    with pytest.raises(UsageError, match=words):
        make_request([PROBE], **options)


def test_options_that_take_effect_are_accepted():
    request = make_request([PROBE], events=False, count_by=["str(arg1)"], string_size=200)
    assert request.string_size == 200 and request.reads_strings
    assert make_request([PROBE], strings=["arg1"]).string_size == DEFAULT_STRING_SIZE == 128
    latency = make_request(["usdt:/x:p:a", "usdt:/x:p:b"], latency=True, pair_keys=("arg0", "arg0"), events=False)
    assert latency.pair is not None and latency.pair.start_key == latency.pair.done_key


def test_session_options_that_would_be_ignored_are_refused():
    with pytest.raises(UsageError, match="command_stdout"):
        trace(PROBE, command_stdout=1)
    with pytest.raises(UsageError, match="command or a pid"):
        trace(PROBE, command=["/bin/true"], pid=1)


def test_a_command_target_fills_in_the_binary():
    request = make_request(["usdt::hello:tick"], target=Target(123, "/usr/bin/app"))
    assert request.probes[0].binary == "/usr/bin/app" and not request.target.resolve_in_pid
    assert make_request([PROBE], target=Target(123)).target.resolve_in_pid


def test_a_request_is_resolved_again_from_scratch(tmp_path):
    # a request holds no file: the same request makes a fresh plan each time
    from usdtkit.errors import TargetError
    from usdtkit.plan.plan import make_plan

    request = make_request([f"usdt:{tmp_path}/later:p:n"])
    with pytest.raises(TargetError):
        make_plan(request)
    assert request.probes[0].binary.endswith("later")


def test_zero_is_not_quietly_a_default():
    with pytest.raises(UsageError, match="string size"):
        make_request([PROBE], strings=["arg1"], string_size=0)
    with pytest.raises(UsageError, match="power of two"):
        make_request([PROBE], ring_pages=0)


def test_cumulative_without_an_interval_is_refused():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "count", "--cumulative", PROBE],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--cumulative" in result.stderr and len(result.stderr.splitlines()) == 1


def test_an_object_a_site_uses_is_never_discarded(tmp_path):
    import os

    from usdtkit.plan.objects import ObjectTable

    (tmp_path / "a").write_bytes(b"\x7fELF")
    (tmp_path / "b").write_bytes(b"\x7fELF")
    table = ObjectTable()
    first = table.use(table.open(str(tmp_path / "a")))
    again = table.open(str(tmp_path / "a"))  # a second probe searching the same file finds nothing there
    assert again is first
    table.discard(again)
    assert os.readlink(first.proc_path) == str(tmp_path / "a")
    other = table.open(str(tmp_path / "b"))
    assert other.fd != first.fd
    table.close()


def test_resolutions_in_two_threads_keep_their_own_files(tmp_path):
    import threading

    from usdtkit.plan import resolve

    tables = {}
    ready = threading.Barrier(2)

    def worker(name: str) -> None:
        with resolve.resolving() as table:
            ready.wait()
            resolve._open(str(tmp_path / name))
            ready.wait()
            tables[name] = [o.path for o in table.objects]
        table.close()

    for name in ("a", "b"):
        (tmp_path / name).write_bytes(b"x")
    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tables == {"a": [str(tmp_path / "a")], "b": [str(tmp_path / "b")]}
