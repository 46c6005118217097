"""Forked workers: the child gets hooks off and a provider of its own (see
:meth:`.Instrumentation.restart_in_child` for why), before ``os.fork()`` returns in it."""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional

from .instrumentation import Instrumentation


def watch_forks(current: Callable[[], Optional[Instrumentation]], forget: Callable[[], None]) -> None:
    """Restart ``current()`` in every child forked from now on; ``forget()`` it if that fails."""

    def after_in_child() -> None:
        instrumentation = current()
        if instrumentation is None:
            return
        try:
            instrumentation.restart_in_child()
        except Exception as exc:  # the child runs on, untraced, rather than failing in fork()
            forget()
            print(f"usdtkit.instrument: pid {os.getpid()} (forked) is not instrumented: {exc}", file=sys.stderr)

    os.register_at_fork(after_in_child=after_in_child)
