"""Every code snippet in README.md runs, so the guide cannot rot: `sh` blocks line by line through the
CLI, `python` blocks as scripts (or, when they start with `# test_*.py`, as a pytest file)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def shell_lines():
    return [line for lang, body in BLOCKS if lang == "sh" for line in body.splitlines() if line.strip()]


def python_blocks():
    return [body for lang, body in BLOCKS if lang == "python"]


def test_readme_has_snippets():
    assert len(shell_lines()) >= 8 and len(python_blocks()) >= 3


@pytest.fixture(scope="module", autouse=True)
def hello():
    """The README's demo program, built like `make setup` builds it."""
    out = ROOT / "demo_apps" / "build" / "hello_usdt"
    out.parent.mkdir(exist_ok=True)
    subprocess.run(["gcc", "-O2", "-g", "-o", str(out), str(ROOT / "demo_apps" / "hello_usdt.c")], check=True)


@pytest.mark.bpf
@pytest.mark.parametrize("line", shell_lines())
def test_shell_snippet(line):
    argv = shlex.split(line)
    assert argv[0] == "usdtkit"
    result = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", *argv[1:]], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the snippet printed nothing"


@pytest.mark.bpf
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_snippet(index, tmp_path):
    code = python_blocks()[index]
    first = code.splitlines()[0]
    if re.fullmatch(r"# (test_\w+\.py)", first):
        path = tmp_path / first[2:]
        path.write_text(code)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)]
    else:
        path = tmp_path / "snippet.py"
        path.write_text(code)
        cmd = [sys.executable, str(path)]
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in re.findall(r"print\(.*\)\s+# (\[.*\])$", code, re.M):
        assert expected in result.stdout  # the output the README promises
