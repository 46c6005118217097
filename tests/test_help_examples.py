"""Every example in ``usdtkit COMMAND --help`` runs against real probes.

Examples are read from the parser itself: the lines under ``examples:`` in each command's epilog,
and the values an option's help quotes (``'arg0 > 5'``), each of which must be the value of that
option in one of the examples of a command that shows this help.  So an example that is added
broken, or an option example that no command line shows, fails here.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import cli_examples  # noqa: E402

from usdtkit.cli.main import build_parser  # noqa: E402


def commands() -> Dict[str, argparse.ArgumentParser]:
    """The sub-command parsers, walked from the top-level parser."""
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def examples(parser: argparse.ArgumentParser) -> List[str]:
    """The command lines under ``examples:`` in the parser's epilog (up to the first blank line)."""
    lines = (parser.epilog or "").splitlines()
    if "examples:" not in lines:
        return []
    found = []
    for line in lines[lines.index("examples:") + 1:]:
        if not line.strip():
            break
        found.append(line.strip())
    return found


def quoted(help_text: str) -> List[str]:
    """The values a help string quotes as examples."""
    return re.findall(r"'([^']+)'", help_text or "")


def parse(line: str) -> argparse.Namespace:
    """``line`` as the real parser reads it (``PID`` standing for a process id)."""
    argv = ["1" if word == "PID" else word for word in shlex.split(line)]
    return build_parser().parse_args(argv[1:])  # exits 2 on a usage error


def all_examples() -> List[Tuple[str, str]]:
    return [(name, line) for name, parser in commands().items() for line in examples(parser)]


def test_every_command_has_examples_that_parse():
    for name, parser in commands().items():
        lines = examples(parser)
        assert lines, f"usdtkit {name} --help shows no examples"
        for line in lines:
            assert shlex.split(line)[:2] == ["usdtkit", name], line
            parse(line)


def test_every_help_text_formats():
    """argparse expands %-formats in help texts when --help prints them: a stray % breaks --help."""
    for name, parser in commands().items():
        assert f"usage: usdtkit {name}" in parser.format_help()


def test_every_quoted_option_value_is_shown_in_an_example():
    """An option's quoted example is checked by running a command line that uses it."""
    shown: Dict[Tuple[str, str], List[str]] = {}  # (help text, value) -> commands showing that help
    dests: Dict[str, str] = {}
    for name, parser in commands().items():
        for action in parser._actions:
            for value in quoted(action.help):
                shown.setdefault((action.help, value), []).append(name)
                dests[action.help] = action.dest
    assert shown, "no option help quotes an example"
    for (help_text, value), names in shown.items():
        dest = dests[help_text]
        used = []
        for name in names:
            for line in examples(commands()[name]):
                given = getattr(parse(line), dest)
                used += given if isinstance(given, list) else [given]
        assert value in used, f"{value!r} ({dest} in usdtkit {'/'.join(names)} --help) is in no example"


@pytest.mark.bpf
@pytest.mark.parametrize("name,line", all_examples(), ids=[line[8:60] for _, line in all_examples()])
def test_example_runs(targets, name, line):
    cli_examples.check(cli_examples.run_once(line, targets))
