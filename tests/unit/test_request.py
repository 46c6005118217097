"""A TraceRequest refuses every option that would have no effect, by name, before any file is read."""
from __future__ import annotations

import pytest

from usdtkit.errors import UsageError
from usdtkit.expr.fields import Field
from usdtkit.plan.request import DEFAULT_STRING_SIZE, HistSpec, Target, make_request
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


# --------------------------------------------------------------------------- keys of latency traces
PAIR = ["usdt:/x:p:start", "usdt:/x:p:done"]


def test_start_fields_are_parsed_where_sides_exist():
    from usdtkit.expr.fields import Field

    assert Field.parse("start.str(arg0)", sides=True) == Field("str", 0, "start")
    assert str(Field("str", 0, "start")) == "start.str(arg0)" and Field("comm", side="start").key_name == "start_comm"
    assert Field.parse("done.arg1", sides=True) == Field.parse("arg1")  # the done probe's own value
    with pytest.raises(UsageError, match="latency histograms only"):
        Field.parse("start.arg0")  # count keys, filters and values have no sides
    for text in ("start.retval", "start.latency", "start.ustack"):
        with pytest.raises(UsageError, match="the start probe keeps"):
            Field.parse(text, sides=True)
    with pytest.raises(UsageError, match="unknown field"):
        Field.parse("middle.arg0", sides=True)


def test_latency_histograms_split_by_fields_of_both_probes():
    request = make_request(PAIR, latency=True, events=False, hist="latency",
                           hist_by=["start.str(arg1)", "arg1", "start.arg1"])
    assert [str(f) for f in request.hist.by_fields] == ["start.str(arg1)", "arg1", "start.arg1"]
    assert [str(f) for f in request.start_fields] == ["start.str(arg1)", "start.arg1"]
    assert request.pair.start == 0 and request.reads_strings
    with pytest.raises(UsageError, match="twice"):
        make_request(PAIR, latency=True, events=False, hist="latency", hist_by=["arg1", "done.arg1"])


@pytest.mark.parametrize("options, words", [
    (dict(hist="arg0", hist_by="start.arg1"), "only latency traces"),
    (dict(count_by=["start.arg1"]), "latency histograms only"),
    (dict(hist="start.arg1"), "latency histograms only"),
])
def test_start_fields_outside_latency_histograms_are_refused(options, words):
    with pytest.raises(UsageError, match=words):
        make_request(PAIR, events=False, **options)


def test_a_function_argument_is_its_entry_value():
    request = make_request(["uprobe:/x:f"], latency=True, events=False, hist="latency", hist_by=["arg0", "retval"])
    assert [str(f) for f in request.hist.by_fields] == ["start.arg0", "retval"]
    assert [(r.kind, r.name) for r in request.probes] == [("uprobe", "f"), ("uretprobe", "f")]


@pytest.mark.parametrize("keys, start, done", [
    (("arg0", "arg1"), ["arg0"], ["arg1"]),
    (("arg0&tid", "arg0&tid"), ["arg0", "tid"], ["arg0", "tid"]),
    (("arg0&arg2", ("arg1", "arg3")), ["arg0", "arg2"], ["arg1", "arg3"]),
])
def test_pair_keys_of_one_or_several_fields(keys, start, done):
    pair = make_request(PAIR, latency=True, events=False, pair_keys=keys).pair
    assert [str(f) for f in pair.start_fields] == start and [str(f) for f in pair.done_fields] == done


@pytest.mark.parametrize("keys, words", [
    (("arg0&arg1", "arg0"), "2 start field"),
    (("arg0&arg1&arg2&arg3&arg4",) * 2, "at most 4"),
    (("arg0&arg0", "arg0&arg1"), "named twice"),
    (("comm", "comm"), "use argN, pid, tid or cpu"),
    (("start.arg0", "arg0"), "latency histograms only"),
    (("arg0&", "arg0"), "unknown field"),
])
def test_bad_pair_keys_are_refused(keys, words):
    with pytest.raises(UsageError, match=words):
        make_request(PAIR, latency=True, events=False, pair_keys=keys)


@pytest.mark.parametrize("argv, words", [
    (["-k", "arg0,arg1,arg2"], "--key takes FIELDS"),
    (["-k", "arg0&pid,arg0"], "1 done field"),
    (["--by", "start.ustack"], "the start probe keeps"),
])
def test_the_cli_refuses_bad_latency_keys_in_one_line(argv, words):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "latency", *argv, *PAIR],
                            capture_output=True, text=True)
    assert result.returncode == 2 and words in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("sums, words", [
    ((Field("str", 1),), "only numbers"),
    ((Field("comm"),), "only numbers"),
    ((Field("arg", 1, "start"),), "only numbers"),
    ((Field("arg", 0),), "own field; use sum=True"),
    ((Field("arg", 1), Field("arg", 1)), "twice"),
    (tuple(Field("arg", i) for i in range(1, 6)), "at most 4"),
    (("arg1",), "only numbers"),
])
def test_histogram_sums_take_distinct_numbers_other_than_the_histogram_field(sums, words):
    with pytest.raises(UsageError, match=words):
        HistSpec(Field("arg", 0), sums=sums)


def test_histogram_sums_accept_one_field_or_several():
    assert HistSpec(Field("arg", 0), sums=Field("arg", 1)).sums == (Field("arg", 1),)
    spec = HistSpec(Field("latency"), sums=(Field("arg", 1), Field("retval")))
    assert make_request([PROBE], events=False, hist=spec).hist.sums == (Field("arg", 1), Field("retval"))
