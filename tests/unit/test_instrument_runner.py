"""``python -m usdtkit.instrument`` runs a program as ``python`` would: the same argv, sys.path[0],
``__main__``, exit status and exceptions, for a script and for ``-m``; bad input is one line and a
nonzero exit; the environment carries instrumentation to Python children that import the bootstrap;
nothing is left in the runtime folder after the processes end."""
from __future__ import annotations

import glob
import os
import shlex
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest

from usdtkit.instrument.runner import EPILOG, PROG, split_argv

ROOT = Path(__file__).resolve().parents[2]

SHOW = textwrap.dedent("""\
    import pickle, sys
    class Thing:
        pass
    if __name__ == "__main__":
        print(repr(sys.argv))
        print(sys.path[0], __name__, __file__, getattr(__spec__, "name", None))
        print(type(pickle.loads(pickle.dumps(Thing()))).__qualname__, sys.modules["__main__"].Thing is Thing)
        if sys.argv[1:2] == ["raise"]:
            raise ValueError("boom")
        sys.exit(int(sys.argv[1]))
    """)


@pytest.fixture
def env(tmp_path: Path) -> Dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("USDTKIT_INSTRUMENT")}
    return dict(clean, PYTHONPATH=str(ROOT), USDTKIT_RUNTIME_DIR=str(tmp_path / "run"))


def run(argv: List[str], env: Dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=str(cwd),
                          timeout=60)


def instrumented(argv: List[str], env: Dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return run(["-m", "usdtkit.instrument", *argv], env, cwd)


def test_a_script_runs_as_python_runs_it(tmp_path: Path, env: Dict[str, str]):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "show.py").write_text(SHOW)
    (tmp_path / "app" / "broken.py").write_text("def f(:\n")
    plain, ours = run(["app/broken.py"], env, tmp_path), instrumented(["app/broken.py"], env, tmp_path)
    assert (ours.returncode, ours.stderr) == (plain.returncode, plain.stderr) == (1, plain.stderr)
    assert "SyntaxError" in plain.stderr
    for args in (["3", "--include", "x"], ["0"], ["raise", "-m"]):
        plain = run(["app/show.py", *args], env, tmp_path)
        ours = instrumented(["app/show.py", *args], env, tmp_path)
        assert (ours.returncode, ours.stdout) == (plain.returncode, plain.stdout)
        assert ours.stderr.splitlines()[-1:] == plain.stderr.splitlines()[-1:]
    assert "ValueError: boom" in ours.stderr and "Traceback" in ours.stderr
    assert plain.stdout.splitlines()[1].split()[0] == str(tmp_path / "app")  # sys.path[0]: the script's folder
    (tmp_path / "app" / "__main__.py").write_text(SHOW)
    with zipfile.ZipFile(tmp_path / "app.zip", "w") as archive:
        archive.write(tmp_path / "app" / "__main__.py", "__main__.py")
    for target in ("app", "app.zip"):  # a folder or a zip file with a __main__.py
        plain = run([target, "5"], env, tmp_path)
        ours = instrumented([target, "5"], env, tmp_path)
        assert (ours.returncode, ours.stdout) == (plain.returncode, plain.stdout) and plain.returncode == 5


def test_a_module_runs_as_python_dash_m_runs_it(tmp_path: Path, env: Dict[str, str]):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tool.py").write_text(SHOW)
    (package / "__main__.py").write_text(SHOW)
    shown = []
    for argv in (["-m", "pkg.tool", "4", "-v"], ["-m", "pkg", "0"], ["-mpkg.tool", "0"]):
        plain = run(argv, env, tmp_path)
        ours = instrumented(argv, env, tmp_path)
        assert (ours.returncode, ours.stdout) == (plain.returncode, plain.stdout), ours.stderr
        shown.append(plain.stdout.splitlines()[1].split()[-1])  # __spec__.name
    assert shown == ["pkg.tool", "pkg.__main__", "pkg.tool"]


@pytest.mark.parametrize("argv,message", [
    ([], "give one program to run: SCRIPT or -m MODULE"),
    (["missing.py"], "can't open file 'missing.py': No such file or directory"),
    (["-m", "no_such_module_here"], "no module named 'no_such_module_here'"),
    (["--include", "", "app.py"], "include: '' is not a glob"),
    (["--bogus", "app.py"], "unrecognized arguments: --bogus"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, env: Dict[str, str], argv, message):
    (tmp_path / "app.py").write_text("print('ran')\n")
    ours = instrumented(argv, env, tmp_path)
    assert ours.returncode == 2 and ours.stdout == ""
    assert message in ours.stderr and "Traceback" not in ours.stderr
    assert ours.stderr.splitlines()[-1].startswith("python -m usdtkit.instrument: error: ")


def test_options_end_at_the_program():
    assert split_argv(["--include", "a*", "app.py", "--include", "b"]) == (["--include", "a*", "app.py"],
                                                                          ["--include", "b"])
    assert split_argv(["--exclude=x", "-m", "pkg.mod", "-m", "y"]) == (["--exclude=x", "-m", "pkg.mod"], ["-m", "y"])
    assert split_argv(["-mpkg", "a"]) == (["-mpkg"], ["a"])
    assert split_argv(["--", "-odd.py", "a"]) == (["--", "-odd.py"], ["a"])


OLD_PYTHONS = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3")))


@pytest.mark.skipif(not OLD_PYTHONS, reason="no Python 3.10 here")
def test_python_older_than_3_11_is_told_so(tmp_path: Path, env: Dict[str, str]):
    (tmp_path / "app.py").write_text("print('ran')\n")
    ours = subprocess.run([OLD_PYTHONS[0], "-m", "usdtkit.instrument", "app.py"], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=60)
    assert ours.returncode == 1 and ours.stdout == ""
    assert ours.stderr.strip().startswith("python -m usdtkit.instrument: error: usdtkit.instrument needs "
                                          "Python 3.11 or newer; this is 3.10")


CHILD = textwrap.dedent("""\
    import os, sys
    import usdtkit.instrument.bootstrap
    import usdtkit.instrument
    now = usdtkit.instrument.current()
    maps = open("/proc/self/maps").read()
    if now is None:
        print("plain", "/pycalls-" in maps)
    else:
        print("instrumented", now.path in maps, now.scope.include, now.scope.exclude)
    """)
PARENT = textwrap.dedent("""\
    import os, subprocess, sys
    import usdtkit.instrument
    print("parent", usdtkit.instrument.current().path in open("/proc/self/maps").read(), flush=True)
    subprocess.run([sys.executable, "child.py"], check=True)
    subprocess.run([sys.executable, "child.py"], check=True, env={**os.environ, "USDTKIT_INSTRUMENT": ""})
    """)


def test_python_children_that_import_the_bootstrap_are_instrumented_alike(tmp_path: Path, env: Dict[str, str]):
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "parent.py").write_text(PARENT)
    ours = instrumented(["--include", "app.*", "--include", "__main__:*", "--exclude", "*:_*", "parent.py"],
                        env, tmp_path)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.splitlines() == ["parent True", "instrumented True ('app.*', '__main__:*') ('*:_*',)",
                                        "plain False"]
    assert run(["child.py"], env, tmp_path).stdout == "plain False\n"  # no variable: the bootstrap does nothing
    assert os.listdir(tmp_path / "run") == []  # every process unloaded its provider: nothing left behind


def help_examples() -> List[str]:
    lines = EPILOG.splitlines()
    return [line.strip() for line in lines[lines.index("examples:") + 1:lines.index("")]]


@pytest.mark.parametrize("line", [line for line in help_examples() if line.startswith(PROG)])
def test_every_help_example_runs(line: str, tmp_path: Path, env: Dict[str, str]):
    ours = run(["-m", "usdtkit.instrument", *shlex.split(line)[3:]], env, ROOT)
    assert ours.returncode == 0 and ours.stderr == "", ours.stderr


def test_the_help_examples_that_trace_are_checked_by_the_readme_tests():
    sys.path.insert(0, str(ROOT / "tests"))
    import test_readme

    tracing = [line for line in help_examples() if line.startswith("usdtkit ")]
    assert tracing and set(tracing) <= set(test_readme.CHECKS)
    help_text = subprocess.run([sys.executable, "-m", "usdtkit.instrument", "--help"], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    assert help_text.startswith(f"usage: {PROG} ") and all(line in help_text for line in help_examples())
