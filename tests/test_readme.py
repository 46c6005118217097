"""Every example in README.md runs and shows what the README says, so the guide cannot rot.

* Command lines: each line of a ``sh`` block, and each line of a ``text`` block that starts with
  ``usdtkit`` or ``./dev.sh``, runs from the project root (``PID`` replaced by a running demo
  process, see ``fixtures/cli_examples.py``) and its output is checked by its entry in ``CHECKS``;
  a command without an entry fails, so a new example comes with its check.
* Filters quoted in the text (```arg0 > 5```) are traced on the demo program.
* ``python`` blocks run as scripts (or, when they start with ``# test_*.py``, under pytest); what a
  ``print(...)  # [...]`` comment or a following "It prints" block shows must be printed.
* Outputs the README quotes (``usdtkit doctor``'s, the pytest plugin's failure message) are compared
  with the real ones.
"""
from __future__ import annotations

import json
import operator
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import cli_examples  # noqa: E402

ROOT = cli_examples.ROOT
README = (ROOT / "README.md").read_text()
BLOCKS: List[Tuple[str, str]] = re.findall(r"```(\w+)\n(.*?)```", README, re.S)
ENV = cli_examples.ENV
# python blocks, each with the text block that follows it under "It prints ...:" (or "")
PYTHON: List[Tuple[str, str]] = re.findall(r"```python\n(.*?)```(?:\n\nIt prints[^\n]*:\n\n```text\n(.*?)```)?",
                                           README, re.S)
STATUS = re.compile(r"^(OK|WARN|FAIL|SKIP) +(\S+(?: \S+)?)  ")


def commands() -> List[str]:
    found = []
    for lang, body in BLOCKS:
        for line in body.splitlines():
            words = shlex.split(line, comments=True) if line.strip() else []
            if lang == "sh" and line.strip():
                assert words and words[0] == "usdtkit", f"not a usdtkit command in a sh block: {line}"
            if lang in ("sh", "text") and words and words[0] in ("usdtkit", "./dev.sh"):
                found.append(line.split("  #")[0].strip())
    return found


def python_blocks() -> List[str]:
    return [code for code, _ in PYTHON]


# --------------------------------------------------------------------------- what each command shows
def _rows(out: str) -> List[List[str]]:
    """The rows of a count table, without its header."""
    return [line.split() for line in out.splitlines()[1:] if line.strip()]


def _log2_buckets(values: List[int]) -> Dict[str, int]:
    buckets: Dict[str, int] = {}
    for v in values:
        label = f"[{1 << (v.bit_length() - 1)}, {1 << v.bit_length()})"
        buckets[label] = buckets.get(label, 0) + 1
    return buckets


def _hist(out: str) -> Dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\[[^)]*\)) +(\d+) \|", out, re.M) if m.group(2) != "0"}


def _list_python(out: str) -> None:
    assert re.search(r"^  python:function__entry +1 ", out, re.M) and "python:function__return" in out


def _list_postgres(out: str) -> None:
    assert "2 USDT probes" in out and "postgresql:checkpoint__start" in out and "postgresql:checkpoint__done" in out


def _list_malloc(out: str) -> None:
    names = [line.split()[-1] for line in out.splitlines()[2:]]
    assert "malloc@GLIBC_2.2.5" in names and all(n.startswith("mallo") for n in names)


def _list_json(out: str) -> None:
    assert {(p["provider"], p["name"]) for p in json.loads(out)["probes"]} == {("hello", "greet"), ("hello", "tick")}


def _trace_greet(out: str) -> None:
    assert [line.split()[-3:] for line in out.splitlines()] == [["hello:greet", str(i), '"reader"'] for i in (1, 2, 3)]


def _trace_json(out: str) -> None:
    assert [json.loads(line)["args"] for line in out.splitlines()] == [[1, 1], [2, 4]]


def _count_filtered(out: str) -> None:
    assert sorted(_rows(out)) == sorted([["hello:tick", str(i * i), "1"] for i in range(3, 6)])


def _count_odd_big_ticks(out: str) -> None:
    assert sorted(_rows(out)) == [["hello:tick", "3", "1"], ["hello:tick", "5", "1"]]


def _count_two_greets(out: str) -> None:
    assert _rows(out) == [["hello:greet", "2"]]


def _count_nanosleep_zero(out: str) -> None:
    assert _rows(out) == [["nanosleep:return", "0", "2"]]


def _count_python(out: str) -> None:
    rows = _rows(out)
    assert rows and all(row[0] == "python:function__entry" and int(row[-1]) > 0 for row in rows)


def _count_followed(out: str) -> None:
    rows = _rows(out)
    assert sorted(int(row[2]) for row in rows) == [2, 3] and len({row[1] for row in rows}) == 2, out


def _trace_orders(out: str) -> None:
    assert [line.split()[-3:] for line in out.splitlines()] == [
        ["demo_orders:order", str(i), f'"{item}"'] for i, item in enumerate(("espresso", "latte", "tea"))]


def _count_worker_orders(out: str) -> None:
    rows = _rows(out)
    assert [row[2] for row in rows] == ["50", "50"] and len({row[1] for row in rows}) == 2, out


def _hist_squares(out: str) -> None:
    assert "hello:tick arg1: 20 values" in out
    assert _hist(out) == _log2_buckets([i * i for i in range(1, 21)])


def _latency_nanosleep(out: str) -> None:
    assert "nanosleep latency (ns): 5 values" in out
    assert all(label.startswith(("[16M", "[32M", "[64M")) for label in _hist(out))  # 20 ms sleeps


def _latency_routes(out: str) -> None:
    # three requests per route (fixtures/cli_examples.py), each matched start to done
    for route in ("/", "/items", "/slow", "other"):
        assert f"[str(arg2)={route}] latency (ns): 3 values" in out, route


def _count_pid_string(out: str) -> None:
    ((probe, pid, name, count),) = _rows(out)
    assert (probe, name, count) == ("hello:greet", "reader", "3") and int(pid) > 0


def _count_stacks(out: str) -> None:
    # The program runs 0.4 s, long enough for its mappings to be read while it lives (a stack is named
    # from the mappings of its process; one that ran only for a few ms leaves addresses).
    ((probe, comm, stack, count),) = _rows(out)
    assert (probe, comm, count) == ("hello:tick", "hello_usdt", "20") and stack.split(";")[-1] == "main"


def _own_cgroup_id() -> int:
    """The cgroup a command started from here runs in (the examples' -c commands inherit it)."""
    from usdtkit.plan.cgroups import cgroup2_mounts, cgroup_id

    with open("/proc/self/cgroup") as handle:
        path = next(line.split("::", 1)[1].strip() for line in handle if line.startswith("0::"))
    return cgroup_id(os.path.join(cgroup2_mounts()[0], path.lstrip("/")))


def _count_cgroup(out: str) -> None:
    assert _rows(out) == [["hello:tick", str(_own_cgroup_id()), "hello_usdt", "3"]]


def _hist_by_thread(out: str) -> None:
    assert re.fullmatch(r"hello:tick \[tid=\d+, comm=hello_usdt\] arg1: 4 values, .*", out.splitlines()[0])
    assert _hist(out) == _log2_buckets([i * i for i in range(1, 5)])


def _latency_paths(out: str) -> None:
    # three requests per path (fixtures/cli_examples.py); only /missing is answered 404
    for path, status in (("/", 200), ("/items/40", 200), ("/slow", 200), ("/missing", 404)):
        assert f"[start.str(arg3)={path}, arg1={status}] latency (ns): 3 values" in out, path


def _latency_printf(out: str) -> None:
    assert "printf [str(arg0)=hello %s #%ld\\n] latency (ns): 3 values" in out


def _latency_accept(out: str) -> None:
    assert "demo_httpd:request__start latency (ns): 12 values" in out


def _latency_two_fields(out: str) -> None:
    assert "demo_httpd:request__done latency (ns): 12 values" in out


def _count_every_hello_probe(out: str) -> None:
    assert sorted(_rows(out)) == [["hello:greet", "5"], ["hello:tick", "5"]]


def _latency_every_nanosleep(out: str) -> None:
    # nanosleep calls clock_nanosleep: both are timed, each under its own name
    for name in ("nanosleep", "clock_nanosleep"):
        assert re.search(rf"^{name} latency \(ns\): 5 values", out, re.M), name


def _count_cpp_name(out: str) -> None:
    assert _rows(out) == [["Threads::create_vm(JavaVMInitArgs*,", "bool*)", "1"]]


def _dev_demo(out: str) -> None:
    assert "\ntracing works\n" in out
    assert re.search(r"^(\d+) requests traced; matches the \1 requests sent; 0 records lost\.$", out, re.M)


def _exporter_check(out: str) -> None:
    assert out.strip() == "demo_apps/exporter.yaml: 2 metrics, 2 probe sites found"


def _call_rows(out: str) -> List[Dict[str, str]]:
    """The rows of a ``usdtkit pycalls`` table (cells are two or more spaces apart), by column name."""
    lines = out.splitlines()
    header = re.split(r"\s{2,}", lines[1].strip())
    return [dict(zip(header, re.split(r"\s{2,}", line.strip()))) for line in lines[2:]
            if line.strip() and not line.startswith(("...", "gc:"))]


PYCALLS_FUNCTIONS = {"__main__:Shop.checkout", "__main__:lookup"}  # of fixtures/pycalls_target.py


def _pycalls_profile(out: str) -> None:
    assert out.startswith("source: pycalls:function__return of usdtkit.instrument")
    rows = {row["function"]: row for row in _call_rows(out)}
    assert set(rows) == PYCALLS_FUNCTIONS and list(rows)[0] == "__main__:Shop.checkout"
    lookup = rows["__main__:lookup"]
    assert lookup["self"] == lookup["total"] and lookup["p50<="] == "16.8 ms"  # 10 ms sleeps
    assert re.search(r"^gc: \d+ collection\(s\), ", out, re.M)


def _pycalls_threads(out: str) -> None:
    rows = _call_rows(out)
    assert len(rows) == 3 and {row["function"] for row in rows} <= PYCALLS_FUNCTIONS
    assert all(row["tid"].isdigit() for row in rows)
    assert "... and 1 more functions (4 in all; --top 0 shows every row)" in out  # 2 functions x 2 threads


def _pycalls_json(out: str) -> None:
    doc = json.loads(out)
    assert doc["source"] == "pycalls" and doc["gc"] is not None
    assert {row["function"] for row in doc["functions"]} == PYCALLS_FUNCTIONS
    for row in doc["functions"]:
        assert set(row) == {"function", "file", "line", "calls", "total_ns", "self_ns", "p50_ns", "p99_ns"}
        assert row["file"].endswith("pycalls_target.py") and 0 < row["self_ns"] <= row["total_ns"]


def _pycalls_cpython(out: str) -> None:
    assert out.startswith("source: python:function__return of CPython itself (calls only)")
    rows = _call_rows(out)
    assert len(rows) == 5 and re.search(r"^\.\.\. and \d+ more functions", out, re.M)
    json_calls = {(row["function"], row["file:return_line"].rsplit(":", 1)[0], row["calls"]) for row in rows[:3]}
    assert json_calls == {("dumps", "/usr/lib/python3.11/json/__init__.py", "2000"),
                          ("encode", "/usr/lib/python3.11/json/encoder.py", "2000"),
                          ("iterencode", "/usr/lib/python3.11/json/encoder.py", "2000")}


def _count_pycalls(out: str) -> None:
    counts = {row[1]: int(row[2]) for row in _rows(out)}  # demo_apps/pyorders.py, instrumented
    assert {"__main__:handle", "__main__:Order.__init__", "__main__:Order.total", "__main__:price"} <= set(counts)
    assert all(name.startswith("__main__:") for name in counts) and counts["__main__:price"] >= counts["__main__:handle"]


def _hist_pycalls(out: str) -> None:
    handle = re.search(r"^pycalls:function__return \[str\(arg0\)=__main__:handle\] arg4: \d+ values.*\n"
                       r"((?:\[.*\n?)+)", out, re.M)
    assert handle, out
    assert [line.split(")")[0] + ")" for line in handle.group(1).splitlines()] == ["[8M, 16M)"]  # 10 ms sleeps


def test_the_instrumented_example_is_the_program_shown():
    """``PID`` in the pycalls examples is the process the README starts (fixtures/cli_examples.py)."""
    shown = [line.split("  #")[0].strip() for lang, body in BLOCKS if lang == "text" for line in body.splitlines()]
    assert cli_examples.INSTRUMENTED in shown


def test_the_exporter_config_shown_is_the_file_checked():
    (shown,) = [body for lang, body in BLOCKS if lang == "yaml"]
    assert shown == (ROOT / "demo_apps" / "exporter.yaml").read_text()


def _files(check: Callable[["cli_examples.Ran"], None]) -> Callable[["cli_examples.Ran"], None]:
    """Marks a check that reads the files the command wrote (it gets the whole run, not its output)."""
    setattr(check, "reads_files", True)
    return check


@_files
def _flamegraph_sleeps(ran: "cli_examples.Ran") -> None:
    from usdtkit.views.flamegraph import frames_of
    from usdtkit.views.stacks import parse_folded

    counted = sum(int(row[-1]) for row in _rows(ran.stdout))
    assert counted > 10  # hello_usdt sleeps every 20 ms
    stacks = parse_folded(ran.files["--folded"].read_text().splitlines())
    assert sum(stacks.values()) == counted
    assert all(stack[0] == "hello_usdt" and stack[-1].endswith("nanosleep") for stack in stacks), stacks
    frames = frames_of(ran.files["--flamegraph"].read_text())
    assert ("all", counted, 0) in {(name, width, depth) for name, width, depth, _ in frames}


def _top_sleeps(out: str) -> None:
    lines = out.splitlines()
    assert lines[0].startswith("usdtkit top - pid ") and lines[1].split() == [
        "PROBE", "COMM", "PID", "HITS/S", "TOTAL", "P50", "P99"]
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert set(rows) == {"hello:tick", "nanosleep"}, lines
    assert 25 <= float(rows["hello:tick"][3]) <= 75 and rows["nanosleep"][5:] == ["33.6", "ms", "33.6", "ms"]


@_files
def _pycalls_flamegraph(ran: "cli_examples.Ran") -> None:
    from usdtkit.views.flamegraph import frames_of

    _pycalls_rows_only(ran.stdout)
    frames = {(name, depth) for name, _, depth, _ in frames_of(ran.files["--flamegraph"].read_text())}
    assert {("__main__:Shop.checkout", 1), ("__main__:lookup", 2)} <= frames, frames


def _pycalls_rows_only(out: str) -> None:
    assert out.startswith("source: pycalls:function__return of usdtkit.instrument")
    assert {row["function"] for row in _call_rows(out)} == PYCALLS_FUNCTIONS


CHECKS: Dict[str, Callable] = {
    "usdtkit count -p PID -d 1 --by comm,ustack --flamegraph sleeps.svg --folded sleeps.folded uprobe:libc:nanosleep":
        _flamegraph_sleeps,
    "usdtkit top -p PID -d 2 -l uprobe:libc:nanosleep usdt::hello:tick": _top_sleeps,
    "usdtkit pycalls -p PID -d 1 --flamegraph calls.svg": _pycalls_flamegraph,
    "usdtkit list /usr/bin/python3.11 'python:function__*'": _list_python,
    "usdtkit list --usdt /usr/lib/postgresql/15/bin/postgres 'postgresql:checkpoint*'": _list_postgres,
    "usdtkit list --functions libc 'mallo*'": _list_malloc,
    "usdtkit list --json --usdt demo_apps/build/hello_usdt": _list_json,
    "usdtkit trace -s arg1 -c 'demo_apps/build/hello_usdt 3 reader' 'usdt::hello:greet'": _trace_greet,
    "usdtkit trace --json -c 'demo_apps/build/hello_usdt 2' 'usdt::hello:tick'": _trace_json,
    "usdtkit count --by arg1 -f 'arg0 > 2' -c 'demo_apps/build/hello_usdt 5' 'usdt::hello:tick'": _count_filtered,
    "usdtkit count --by arg0 -f 'arg0 % 2 == 1 && arg1 > 5' -c 'demo_apps/build/hello_usdt 6' 'usdt::hello:tick'":
        _count_odd_big_ticks,
    "usdtkit count -f 'str(arg1) == \"reader\" && (arg0 == 1 || arg0 == 3)' -c 'demo_apps/build/hello_usdt 4 reader' "
    "'usdt::hello:greet'": _count_two_greets,
    "usdtkit count --by retval -f '(int32)retval == 0 && comm == \"hello_usdt\"' -c 'demo_apps/build/hello_usdt 2' "
    "'uretprobe:libc:nanosleep'": _count_nanosleep_zero,
    "usdtkit count --by 'str(arg1)' -c '/usr/bin/python3.11 -c pass' 'usdt::python:function__entry'": _count_python,
    "usdtkit count -F --by pid -c \"sh -c 'demo_apps/build/hello_usdt 2; demo_apps/build/hello_usdt 3'\" "
    "usdt:demo_apps/build/hello_usdt:hello:tick": _count_followed,
    "usdtkit trace -s arg1 -c '.venv/bin/python3 demo_apps/orders.py 3' 'usdt::demo_orders:order'": _trace_orders,
    "usdtkit count -F --by pid -c '.venv/bin/python3 demo_apps/orders.py 50 --workers 2' 'usdt::demo_orders:order'":
        _count_worker_orders,
    "usdtkit hist -v arg1 -c 'demo_apps/build/hello_usdt 20' 'usdt::hello:tick'": _hist_squares,
    "usdtkit latency -c 'demo_apps/build/hello_usdt 5' 'uprobe:libc:nanosleep'": _latency_nanosleep,
    "usdtkit latency -p PID --key arg0 --by 'str(arg2)' usdt::demo_httpd:request__start "
    "usdt::demo_httpd:request__done": _latency_routes,
    "usdtkit count --by 'pid,str(arg1)' -c 'demo_apps/build/hello_usdt 3 reader' 'usdt::hello:greet'":
        _count_pid_string,
    "usdtkit count --by comm,ustack -c 'demo_apps/build/hello_usdt 20' 'usdt::hello:tick'": _count_stacks,
    "usdtkit count --by cgroup,comm -c 'demo_apps/build/hello_usdt 3' 'usdt::hello:tick'": _count_cgroup,
    "usdtkit hist -v arg1 --by tid,comm -c 'demo_apps/build/hello_usdt 4' 'usdt::hello:tick'": _hist_by_thread,
    "usdtkit latency -p PID -k arg0 --by 'start.str(arg3),arg1' usdt::demo_httpd:request__start "
    "usdt::demo_httpd:request__done": _latency_paths,
    "usdtkit latency --by 'str(arg0)' -c 'demo_apps/build/hello_usdt 3' 'uprobe:libc:printf'": _latency_printf,
    "usdtkit latency -p PID -k arg0,arg1 usdt::demo_httpd:conn__accept usdt::demo_httpd:request__start":
        _latency_accept,
    "usdtkit latency -p PID -k 'arg0&tid' usdt::demo_httpd:request__start usdt::demo_httpd:request__done":
        _latency_two_fields,
    "usdtkit count -c 'demo_apps/build/hello_usdt 5' 'usdt::hello:*'": _count_every_hello_probe,
    "usdtkit latency -c 'demo_apps/build/hello_usdt 5' 'uprobe:libc:*nanosleep'": _latency_every_nanosleep,
    "usdtkit count -c 'java -version' "
    "'uprobe:/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so:cpp:Threads::create_vm'": _count_cpp_name,
    "usdtkit pycalls -p PID -d 1": _pycalls_profile,
    "usdtkit pycalls -p PID --top 3 --by-thread": _pycalls_threads,
    "usdtkit pycalls --json -p PID -d 1": _pycalls_json,
    "usdtkit pycalls --top 5 -c \"/usr/bin/python3.11 -c 'import json; [json.dumps(i) for i in range(2000)]'\"":
        _pycalls_cpython,
    "usdtkit count -p PID --by 'str(arg0)' usdt::pycalls:function__return": _count_pycalls,
    "usdtkit hist -p PID -v arg4 --by 'str(arg0)' usdt::pycalls:function__return": _hist_pycalls,
    "./dev.sh demo": _dev_demo,
    "usdtkit exporter --config demo_apps/exporter.yaml --check": _exporter_check,
}
# Runs the whole suite, this file included: CI runs it (.ci/run), so it is checked to be that command.
RUN_BY_CI = "./dev.sh test"


def test_readme_has_examples():
    assert len(commands()) >= 12 and len(python_blocks()) >= 3


def test_every_command_has_a_check():
    assert sorted(commands()) == sorted([*CHECKS, RUN_BY_CI])


def test_the_test_command_is_what_ci_runs():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == RUN_BY_CI


@pytest.mark.bpf
@pytest.mark.parametrize("line", sorted(CHECKS), ids=[line[:60] for line in sorted(CHECKS)])
def test_command(targets, line):
    ran = cli_examples.run_once(line, targets)
    cli_examples.check(ran)
    check = CHECKS[line]
    check(ran) if getattr(check, "reads_files", False) else check(ran.stdout)


# --------------------------------------------------------------------------- filters quoted in the text
OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
INLINE_FILTER = re.compile(r"`((?:arg\d+|retval|pid|tid|cpu|comm) (?:==|!=|<=|>=|<|>) [^`\s]+)`")


def test_readme_quotes_filters():
    assert len(INLINE_FILTER.findall(README)) >= 3


@pytest.mark.bpf
@pytest.mark.parametrize("expr", INLINE_FILTER.findall(README))
def test_quoted_filter_runs(expr, tmp_path):
    """Traced on the demo program, the filter keeps exactly the ticks it holds for, as an unfiltered
    session on the same run says.  The program is a private copy, traced by path before it starts, so
    no other process fires these probes and none of its hits is missed."""
    from usdtkit.tracing.api import trace

    hello = tmp_path / "hello_usdt"
    hello.write_bytes(Path(cli_examples.build_hello()).read_bytes())
    hello.chmod(0o700)
    probe = f"usdt:{hello}:hello:tick"
    with trace(probe) as everything, trace(probe, filters=[expr]) as kept:
        subprocess.run([str(hello), "4"], check=True, stdout=subprocess.DEVNULL, timeout=20)
        everything.drain()
        kept.drain()
        events, kept_events = list(everything.events), list(kept.events)
    assert [e.args for e in events] == [(i, i * i) for i in range(1, 5)]
    field, op, value = expr.split()
    values = {"comm": lambda e: e.comm, "pid": lambda e: e.pid, "tid": lambda e: e.tid,
              "cpu": lambda e: e.cpu, "retval": lambda e: e.retval}
    read = values.get(field) or (lambda e: e.args[int(field[3:])])
    wanted = value if field == "comm" else int(value, 0)
    predicted = [e.args for e in events if OPS[op](read(e), wanted)]
    assert [e.args for e in kept_events] == predicted


# --------------------------------------------------------------------------- python blocks
def printed_after(index: int) -> List[str]:
    """The lines of the ``text`` block that follows python block ``index`` under "It prints"."""
    return PYTHON[index][1].splitlines()


def test_every_python_block_shows_what_it_does():
    for index, code in enumerate(python_blocks()):
        assert (re.fullmatch(r"# (test_\w+\.py)", code.splitlines()[0]) or printed_after(index)
                or re.search(r"print\(.*\)\s+# (\[.*\])$", code, re.M)), f"python block {index} shows no output"


def _run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    first = code.splitlines()[0]
    if re.fullmatch(r"# (test_\w+\.py)", first):
        path = tmp_path / first[2:]
        path.write_text(code)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)]
    else:
        path = tmp_path / "snippet.py"
        path.write_text(code)
        cmd = [sys.executable, str(path)]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


@pytest.mark.bpf
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_block(index, tmp_path):
    cli_examples.build_hello()
    code = python_blocks()[index]
    result = _run_python(code, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    if code.startswith("# test_"):
        assert re.search(r"^\d+ passed", result.stdout, re.M), result.stdout
    for expected in re.findall(r"print\(.*\)\s+# (\[.*\])$", code, re.M):
        assert expected in result.stdout  # the output the README promises
    lines = iter(result.stdout.splitlines())
    for expected in printed_after(index):
        assert any(line == expected for line in lines), f"{expected!r} not printed, in order:\n{result.stdout}"


@pytest.mark.bpf
def test_the_plugin_failure_message_is_the_one_shown(tmp_path):
    """The README quotes the message of the pytest example when the count is wrong."""
    shown = re.search(r"When it fails, the message says what was seen:\n`([^`]+)`", README).group(1)
    (code,) = [c for c in python_blocks() if c.startswith("# test_")]
    assert "fired(times=3)" in code
    result = _run_python(code.replace("fired(times=3)", "fired(times=4)"), tmp_path)
    assert result.returncode == 1 and shown in result.stdout, result.stdout


# --------------------------------------------------------------------------- usdtkit doctor's output
def doctor_blocks() -> List[List[str]]:
    return [body.splitlines() for lang, body in BLOCKS if lang == "text" and STATUS.match(body)]


@pytest.mark.bpf
def test_doctor_output_is_the_one_shown():
    """Same checks in the same order, and the same verdict, as the README's `usdtkit doctor` output
    (details such as paths and versions are this machine's)."""
    shown = doctor_blocks()[0]
    ran = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "doctor"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    names = [m.group(2) for m in map(STATUS.match, ran.stdout.splitlines()) if m]
    assert names == [m.group(2) for m in map(STATUS.match, shown) if m]
    assert ran.stdout.splitlines()[-1] == shown[-1] == "tracing works"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to drop it")
def test_doctor_output_without_privileges_is_the_one_shown(tmp_path):
    shown = doctor_blocks()[1]
    os.chmod(tmp_path, 0o777)
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
           sys.executable, "-m", "usdtkit.cli.main", "doctor"]
    env = dict(ENV, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"))
    ran = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1
    lines = iter(ran.stdout.splitlines())
    for expected in shown:
        assert any(line == expected for line in lines), f"{expected!r} not printed, in order:\n{ran.stdout}"
