"""Entry point of the ``usdtkit`` command: builds the parser and turns errors into one-line messages.

Each sub-command lives in its own module ``usdtkit.cli.cmd_<name>`` exposing
``add_parser(subparsers)``; the parser it adds sets ``func`` to a callable taking the parsed arguments
and returning an exit code.  Exit codes: 0 success, 1 failure (bad target, environment), 2 usage,
130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, NoReturn, Optional

from .. import __version__
from ..views.text import printable
from ..errors import UsdtkitError

#: Sub-command modules, in the order ``usdtkit --help`` lists them.
COMMAND_MODULES = ("doctor", "list", "trace", "top", "pycalls", "demo", "exporter")
#: Sub-commands that share the module of another: ``cmd_trace`` builds count, hist and latency too.
SHARED_MODULES = {"count": "trace", "hist": "trace", "latency": "trace"}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (and exit 2)."""

    def error(self, message: str) -> "NoReturn":
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``usdtkit`` parser; given a known ``command``, with that sub-command alone.

    Each sub-command's module and parser cost milliseconds to build, and a one-shot command such as
    ``usdtkit list`` should not pay for all of them; help and unknown commands get every one.
    """
    parser = _Parser(
        prog="usdtkit",
        description="Discover, declare and trace USDT probes and uprobes on Linux.",
    )
    parser.add_argument("--version", action="version", version=f"usdtkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    module_of = {**{name: name for name in COMMAND_MODULES}, **SHARED_MODULES}
    for name in (module_of[command],) if command in module_of else COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.cmd_{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    for stream in (sys.stdout, sys.stderr):  # names read from files and processes may not be UTF-8
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return int(args.func(args) or 0)
    except UsdtkitError as exc:
        # Messages quote paths and names from files and processes: escaped, they stay one harmless line.
        print(f"usdtkit: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and friends: not an error worth a traceback.
        sys.stderr.close()
        return 0
    except Exception as exc:  # a bug: one line by default, the traceback on request
        if os.environ.get("USDTKIT_DEBUG"):
            raise
        print(f"usdtkit: internal error: {type(exc).__name__}: {exc} (set USDTKIT_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
