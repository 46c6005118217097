"""The systemd unit in deploy/: systemd itself finds nothing to say about it, and the command it starts
is one the exporter's parser accepts."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from usdtkit.cli.main import build_parser

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "usdtkit-exporter.service"
INSTALLED = "/usr/local/bin/usdtkit"


def exec_start() -> str:
    (line,) = [x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart=")]
    return line[len("ExecStart="):]


def test_systemd_verifies_the_unit_without_a_word(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    here = str(Path(sys.executable).parent / "usdtkit")  # verify checks that the command exists
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED, here))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stderr


def test_the_unit_starts_the_exporter_as_documented():
    argv = shlex.split(exec_start())
    assert argv[0] == INSTALLED
    args = build_parser().parse_args(argv[1:])
    assert args.command == "exporter" and args.config == "/etc/usdtkit/exporter.yaml"
    assert args.listen == ("127.0.0.1", 9435) and not args.check
    assert "ExecReload=/bin/kill -HUP $MAINPID" in UNIT.read_text()
