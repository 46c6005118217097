"""``--flamegraph``, ``--folded`` and ``--speedscope``: counted stacks written as pictures and profiles.

The options are checked before anything is attached (a flame graph needs ``ustack`` among the key
fields) and the files are written after the counts were printed, so a file that cannot be written
costs nothing already collected.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import stat
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from ..errors import UsageError, UsdtkitError

if TYPE_CHECKING:  # pragma: no cover
    from ..collect.results import Counts

_OPTIONS = ("flamegraph", "folded", "speedscope")


def add_arguments(parser: argparse.ArgumentParser, what: str = "the counted stacks",
                  group_title: str = "stack pictures (with ustack among the --by fields)") -> None:
    group = parser.add_argument_group(group_title)
    group.add_argument("--flamegraph", metavar="FILE", help=f"write {what} as a flame graph: one "
                       "self-contained SVG file (hover for counts, click to zoom, Search or Ctrl-F)")
    group.add_argument("--folded", metavar="FILE", help=f"write {what} as folded lines "
                       "(root;...;leaf COUNT), the input of other flame graph tools")
    group.add_argument("--speedscope", metavar="FILE", help=f"write {what} as a speedscope profile "
                       "(JSON, opens in https://www.speedscope.app or its offline build)")


def wanted(args: argparse.Namespace) -> List[str]:
    return [name for name in _OPTIONS if getattr(args, name, None)]


def check(args: argparse.Namespace, fields: Sequence[str]) -> None:
    """Refuse picture options without stacks to draw, before attaching."""
    chosen = wanted(args)
    if chosen and "ustack" not in [f.strip() for f in fields]:
        raise UsageError(f"--{chosen[0]} needs stacks: add ustack to --by (for example --by ustack or "
                         "--by comm,ustack)")


def write(args: argparse.Namespace, counts: Optional["Counts"], title: str) -> None:
    """Write every picture asked for of counted stacks; one error line per file that could not be written."""
    if not wanted(args):
        return
    from ..collect.results import Counts
    from ..views import stacks as stack_views

    write_stacks(args, stack_views.stacks_of(counts if counts is not None else Counts(("ustack",), {})), title)


def write_stacks(args: argparse.Namespace, stacks: Dict[Tuple[str, ...], int], title: str, unit: str = "hits") -> None:
    """Write every picture asked for of ``stacks`` (root first, with a weight in ``unit``: ``hits``, or
    ``ns`` of time); one error line per file that could not be written."""
    chosen = wanted(args)
    if not chosen:
        return
    from ..views import flamegraph, stacks as stack_views
    from ..views.text import format_value

    total = sum(stacks.values())
    failed: List[str] = []
    for name in chosen:
        path = getattr(args, name)
        if name == "flamegraph":
            shown = format_value(total, "ns") if unit == "ns" else f"{total} {unit}"
            text = flamegraph.render(stacks, title=title, subtitle=shown, unit=unit)
        elif name == "folded":
            text = "".join(line + "\n" for line in stack_views.folded_lines(stacks))
        else:
            profile = stack_views.speedscope(stacks, title, "nanoseconds" if unit == "ns" else "none")
            text = json.dumps(profile, ensure_ascii=False) + "\n"
        try:
            _write_file(path, text.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            failed.append(f"cannot write --{name} {path}: {exc.strerror or exc}")
    if failed:
        raise UsdtkitError("; ".join(failed))


def _write_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, created or replaced, never through a symlink and never into a file of
    another user (root writing where someone else can swap the name would clobber their target)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_uid != os.geteuid():
            raise OSError(errno.EPERM, "the file belongs to another user")
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
