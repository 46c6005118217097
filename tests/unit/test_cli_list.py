"""``usdtkit list`` run as a process: JSON equals the API, tables, filters, PIDs, one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
import elfbuild  # noqa: E402

from usdtkit.elf import read_functions, read_usdt_probes, resolve_library  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
POSTGRES = "/usr/lib/postgresql/15/bin/postgres"
PYTHON = "/usr/bin/python3.11"
LIBSTDCXX = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
LIBJVM = "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so"


def usdtkit(*args: str, user: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "usdtkit.cli.main", "list", *args]
    if user:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


def listing(*args: str) -> dict:
    out = usdtkit("--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # one JSON document


def real(path: str) -> str:
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed")
    return path


# --------------------------------------------------------------------------- JSON
@pytest.mark.parametrize("path", [POSTGRES, LIBJVM])
def test_json_equals_the_api(path):
    path = real(path)
    doc = listing(path)
    assert set(doc) == {"probes", "functions"}
    assert doc["probes"] == [p.to_json() for p in read_usdt_probes(path)]
    assert doc["functions"] == [f.to_json() for f in read_functions(path)]


def test_json_fields_required_by_the_issue():
    path = real(POSTGRES)
    doc = listing(path)
    probe = next(p for p in doc["probes"] if p["name"] == "checkpoint__done")
    assert {"provider", "name", "binary", "semaphore", "locations"} <= set(probe)
    assert probe["binary"] == path and probe["semaphore"] > 0
    loc = probe["locations"][0]
    assert {"address", "base", "semaphore", "arguments", "file_offset", "args"} <= set(loc)
    assert all(isinstance(loc[k], int) for k in ("address", "base", "semaphore", "file_offset"))
    assert loc["arguments"].startswith("-4@40+CheckpointStats(%rip)")
    assert loc["args"][0]["kind"] == "symbol" and loc["args"][0]["address"] is not None
    function = doc["functions"][0]
    assert {"name", "address", "size", "file_offset", "binary"} <= set(function)


def test_json_with_versions_debug_files_and_demangling():
    libc = resolve_library("c")
    doc = listing("--functions", libc, "pthread_*")
    assert doc["functions"] == [f.to_json() for f in read_functions(libc, "pthread_*")]
    assert any(f["version"] for f in doc["functions"])
    if shutil.which("c++filt"):
        path = real(LIBSTDCXX)
        doc = listing("--functions", "--demangle", path, "std::thread::*")
        assert doc["functions"] == [f.to_json() for f in read_functions(path, "std::thread::*", demangle=True)]
        assert doc["functions"] and all(f["demangled"].startswith("std::thread::") for f in doc["functions"])


def test_a_demangled_pattern_matches_the_name_without_its_parameters_unless_it_has_a_parenthesis():
    path = real(LIBSTDCXX)
    overloads = {f["demangled"] for f in listing("--functions", "--demangle", path, "std::thread::join")["functions"]}
    assert overloads == {"std::thread::join()"}
    named = {f["demangled"] for f in listing("--functions", "-C", path, "std::thread::_State::~_State")["functions"]}
    assert named and all(d.startswith("std::thread::_State::~_State(") for d in named)
    assert not listing("--functions", "-C", path, "std::thread::join(int)")["functions"]


def test_kinds_and_patterns():
    path = real(POSTGRES)
    assert set(listing("--usdt", path)) == {"probes"}
    assert set(listing("--functions", path)) == {"functions"}
    assert set(listing("--usdt", "--functions", path)) == {"probes", "functions"}
    names = {p["name"] for p in listing("--usdt", path, "postgresql:checkpoint*")["probes"]}
    assert names == {"checkpoint__start", "checkpoint__done"}
    # Without a colon the pattern may match the probe name alone.
    assert {p["name"] for p in listing("--usdt", path, "checkpoint__*")["probes"]} == names
    assert listing("--usdt", path, "nomatch:*")["probes"] == []
    functions = listing("--functions", path, "heap_insert*")["functions"]
    assert functions and all(f["name"].startswith("heap_insert") for f in functions)


def test_library_name_target():
    doc = listing("--functions", "c", "malloc")
    (malloc,) = doc["functions"]
    assert malloc["binary"] == resolve_library("c") and malloc["binding"] == "GLOBAL"


# --------------------------------------------------------------------------- table
def test_table_output():
    path = real(POSTGRES)
    out = usdtkit(path, "postgresql:checkpoint*")
    assert out.returncode == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0] == f"{path}: 2 USDT probes, 2 call sites"
    assert lines[1].split() == ["PROBE", "SITES", "SEMAPHORE", "ARGUMENTS"]
    assert any(line.split()[:2] == ["postgresql:checkpoint__done", "1"] and "CheckpointStats" in line
               for line in lines)
    assert f"{path}: 0 functions" in lines

    out = usdtkit("--functions", "c", "malloc*")
    body = out.stdout.splitlines()
    assert body[0].endswith("functions") and body[1].split() == ["ADDRESS", "SIZE", "BINDING", "NAME"]
    rows = [line.split() for line in body[2:]]
    assert {"malloc@GLIBC_2.2.5"} <= {r[3] for r in rows}
    assert len(rows) == int(body[0].split(": ")[1].split()[0])
    width = {len(line) - len(line.lstrip()) for line in body[2:]}
    assert width == {2}


def test_help_documents_the_default():
    out = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "list", "--help"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0
    assert "By default both USDT probes and functions are listed" in " ".join(out.stdout.split())


# --------------------------------------------------------------------------- PIDs
MEMFD = r"""
import ctypes, os, sys, time
fd = os.memfd_create("cli-test", 0)
data = open(sys.argv[1], "rb").read()
view = memoryview(data)
while view:
    view = view[os.write(fd, view):]
ctypes.CDLL(f"/proc/self/fd/{fd}")
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def python_process():
    exe = real(PYTHON)
    proc = subprocess.Popen([exe, "-c", MEMFD, real(LIBSTDCXX)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


def test_pid_listing(python_process):
    pid = python_process.pid
    doc = listing("-p", str(pid), "python:function__*")
    assert doc["pid"] == pid
    paths = {o["path"] for o in doc["objects"]}
    assert os.path.realpath(PYTHON) in paths
    assert {(p["provider"], p["name"]) for p in doc["probes"]} == {("python", "function__entry"),
                                                                    ("python", "function__return")}
    assert all(p["pid"] == pid and p["open_path"] for p in doc["probes"])
    assert doc["functions"] == []  # the pattern has a colon: no function matches


def test_pid_listing_includes_memfd_objects(python_process):
    if os.geteuid() != 0:
        pytest.skip("map_files needs root")
    doc = listing("-p", str(python_process.pid), "--usdt", "libstdcxx:*")
    assert {p["binary"] for p in doc["probes"]} == {"/memfd:cli-test"}
    assert len(doc["probes"]) == 3
    memfd = next(o for o in doc["objects"] if o["memfd"])
    assert memfd["deleted"] and memfd["load_bias"] == memfd["start"]


def test_pid_table(python_process):
    out = usdtkit("-p", str(python_process.pid), "--usdt")
    assert out.returncode == 0
    assert f"(pid {python_process.pid}, load bias 0x0)" in out.stdout  # non-PIE python3.11


# --------------------------------------------------------------------------- errors
def assert_one_line_error(out: subprocess.CompletedProcess, *fragments: str, code: int = 1) -> None:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("usdtkit: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert out.stdout == ""


def test_not_an_elf(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just text\n")
    assert_one_line_error(usdtkit(str(path)), str(path), "not an ELF file")


def test_truncated(tmp_path):
    path = tmp_path / "cut.so"
    path.write_bytes(Path(real(LIBSTDCXX)).read_bytes()[:5000])
    assert_one_line_error(usdtkit(str(path)), str(path), "truncated")


def test_corrupt_note_sizes(tmp_path):
    path = tmp_path / "corrupt"
    path.write_bytes(elfbuild.probe_elf(notes=[b"\x08\0\0\0\xf0\xff\xff\x7f\x03\0\0\0stapsdt\0"]))
    assert_one_line_error(usdtkit("--usdt", str(path)), str(path), ".note.stapsdt", "beyond the section")


def test_directory(tmp_path):
    assert_one_line_error(usdtkit(str(tmp_path)), str(tmp_path), "is a directory")


def test_missing_file_and_library(tmp_path):
    assert_one_line_error(usdtkit(str(tmp_path / "nope")), str(tmp_path / "nope"), "no such file")
    assert_one_line_error(usdtkit("no_such_library_xyz"), "no_such_library_xyz", "library not found")


def test_no_permission(tmp_path):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    probe = usdtkit("--help", user=True)
    if probe.returncode != 0:
        pytest.skip(f"usdtkit is not importable as nobody: {probe.stderr.strip()[-200:]}")
    shared = Path(tempfile.mkdtemp(prefix="usdtkit-perm-"))
    try:
        shared.chmod(0o755)
        path = shared / "secret.so"
        shutil.copy(real(LIBSTDCXX), path)
        path.chmod(0o600)  # the file itself is unreadable
        assert_one_line_error(usdtkit(str(path), user=True), str(path), "permission denied")
        closed = shared / "closed"
        closed.mkdir(mode=0o700)
        hidden = closed / "lib.so"
        shutil.copy(real(LIBSTDCXX), hidden)
        hidden.chmod(0o644)  # readable, but its directory cannot be searched
        assert_one_line_error(usdtkit(str(hidden), user=True), str(hidden), "permission denied")
    finally:
        shutil.rmtree(shared)


def test_pid_of_another_user(python_process):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    out = usdtkit("-p", str(python_process.pid), user=True)
    if "No module named" in out.stderr:
        pytest.skip("usdtkit is not importable as nobody")
    assert_one_line_error(out, f"pid {python_process.pid}", "permission denied")


def test_vanished_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert_one_line_error(usdtkit("-p", str(proc.pid)), f"pid {proc.pid}", "no such process")


@pytest.mark.parametrize("args", [(), ("-p", "abc"), ("-p", "1", "a", "b"), ("--bogus", "x")])
def test_usage_errors_exit_2(args):
    out = usdtkit(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_output_to_a_closed_pipe_is_quiet():
    path = real(POSTGRES)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    shell = f"{sys.executable} -m usdtkit.cli.main list --functions {path} | head -1"
    out = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, env=env)
    assert out.stdout.count("\n") == 1 and "Traceback" not in out.stderr and "Error" not in out.stderr


# --------------------------------------------------------------------------- hostile strings
def test_control_characters_are_escaped_in_text_and_exact_in_json(tmp_path):
    # Note strings and symbol names are whatever the file's author wrote: an ESC sequence printed raw
    # would drive the terminal (clear it, retitle it, hide lines).
    provider, name, args = "evil\x1b[2J", "name\x1b]0;owned\x07", "8@%rdi\r"
    function = "func\x1b[8m"
    path = tmp_path / "hostile\x1b[1m"
    path.write_bytes(elfbuild.probe_elf(
        notes=[elfbuild.stapsdt_note(0x1000, 0x3000, 0, provider, name, args)],
        symbols=[(function, 0x1010, 16, 0x12, 1)]))
    text = usdtkit(str(path))
    assert text.returncode == 0, text.stderr
    assert not any(c in text.stdout for c in "\x1b\x07\r"), repr(text.stdout)
    assert "evil\\x1b[2J:name\\x1b]0;owned\\x07" in text.stdout
    assert "8@%rdi\\r" in text.stdout and "func\\x1b[8m" in text.stdout and "hostile\\x1b[1m" in text.stdout
    doc = listing(str(path))
    assert (doc["probes"][0]["provider"], doc["probes"][0]["name"]) == (provider, name)
    assert doc["probes"][0]["locations"][0]["arguments"] == args
    assert doc["functions"][0]["name"] == function


def test_error_naming_a_hostile_path_stays_one_escaped_line(tmp_path):
    missing = tmp_path / "gone\x1b[2J\nfake: line"
    out = usdtkit(str(missing))
    assert_one_line_error(out, "gone\\x1b[2J\\nfake: line", "no such file")
    assert "\x1b" not in out.stderr


# --------------------------------------------------------------------------- known issues
def test_python311_function_entry_is_marked_in_text_and_json():
    path = real(PYTHON)
    version = subprocess.run([path, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    if not version.startswith("3.11."):
        pytest.skip(f"{path} is CPython {version}")
    doc = listing("--usdt", path)
    marked = {p["name"]: p.get("known_issues") for p in doc["probes"]}
    (issue,) = marked.pop("function__entry")
    assert issue.startswith(f"python:function__entry in CPython {version} fires only for frames entered from C")
    assert set(marked.values()) == {None}  # function__return, line, gc__start...: no mark
    text = usdtkit("--usdt", path, "python:function__*")
    lines = text.stdout.splitlines()
    assert next(x for x in lines if "python:function__entry " in x).endswith("(known issue, see note)")
    assert not next(x for x in lines if "python:function__return " in x).endswith("see note)")
    assert f"  note: {issue}" in lines



def test_listing_imports_only_what_it_uses() -> None:
    """Start-up is most of a small listing: no other command's module, no pyelftools, no logging."""
    code = ("import sys; from usdtkit.cli.main import main; main(['list', '--usdt', sys.argv[1]]); "
            "print(sorted(m for m in sys.modules if m.startswith(('usdtkit.cli.cmd_', 'elftools', 'logging'))))")
    out = subprocess.run([sys.executable, "-c", code, PYTHON], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "['usdtkit.cli.cmd_list']"
