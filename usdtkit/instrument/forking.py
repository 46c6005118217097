"""Forked workers: the child gets hooks off and a provider of its own (see
:meth:`.Instrumentation.restart_in_child` for why), before ``os.fork()`` returns in it.

Python 3.12+ warns when a process with more than one thread forks (``DeprecationWarning: This
process ... is multi-threaded``), counting the threads the kernel knows.  The watcher thread would
make every instrumented program that forks warn where ``python`` alone would not, so when a process
whose only other thread is the watcher forks, that one warning is filtered out; a program with
threads of its own still sees it.  The filter stays until the next fork decides again (3.13 warns
after the fork handlers have run).  The fork is safe for the watcher: it holds no lock the child
needs (the child makes new ones and a new watcher).
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import Any, Callable, List, Optional

from .instrumentation import Instrumentation

_FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"


def _os_threads() -> int:
    with open("/proc/self/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[17])  # field 20, num_threads


def watch_forks(current: Callable[[], Optional[Instrumentation]], forget: Callable[[], None]) -> None:
    """Restart ``current()`` in every child forked from now on; ``forget()`` it if that fails."""
    added: List[Any] = []

    def before() -> None:
        drop_filter()
        if sys.version_info < (3, 12) or current() is None:
            return
        try:
            only_watcher = _os_threads() == 2 and threading.active_count() == 2
        except (OSError, ValueError, IndexError):
            return
        if only_watcher:
            warnings.filterwarnings("ignore", _FORK_WARNING, DeprecationWarning)
            added.append(warnings.filters[0])

    def drop_filter() -> None:
        while added:
            entry = added.pop()
            if entry in warnings.filters:
                warnings.filters.remove(entry)
                getattr(warnings, "_filters_mutated", lambda: None)()  # the module caches decisions

    def after_in_child() -> None:
        drop_filter()
        instrumentation = current()
        if instrumentation is None:
            return
        try:
            instrumentation.restart_in_child()
        except Exception as exc:  # the child runs on, untraced, rather than failing in fork()
            forget()
            print(f"usdtkit.instrument: pid {os.getpid()} (forked) is not instrumented: {exc}", file=sys.stderr)

    os.register_at_fork(before=before, after_in_child=after_in_child)
