"""The ``examples:`` section at the end of each command's ``--help``.

Every example is a complete command line, run from the project root, with ``PID`` standing for a
running process.  The test suite runs each one against real probes, and each value an option's help
quotes (``'arg0 > 5'``) must appear in one of them: help text shows only what works.
"""
from __future__ import annotations

import argparse

HEADING = "examples:"


def epilog(*lines: str) -> str:
    """An examples section listing ``lines``, one command per line."""
    return "\n".join([HEADING, *(f"  {line}" for line in lines)])


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions and option help to the terminal, but keeps examples one per line (a
    wrapped command line could not be copied)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(HEADING):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
