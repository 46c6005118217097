"""The hooks of this interpreter: :mod:`.monitoring` on 3.12+, :mod:`.setprofile` on 3.11.

Both offer ``on(decider, entry, ret)`` (the scope's decisions and the two probes), ``off()``,
``refresh()`` (called at every poll while on) and ``close()``.  Only the module of the running
interpreter is imported.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Union

from ..errors import InstrumentError

if TYPE_CHECKING:
    from .monitoring import MonitoringHooks
    from .setprofile import ProfileHooks

Hooks = Union["MonitoringHooks", "ProfileHooks"]


def for_this_python() -> Hooks:
    """The hooks for the running interpreter, or :class:`InstrumentError` saying why there are none."""
    if sys.version_info >= (3, 12):
        from .monitoring import MonitoringHooks

        return MonitoringHooks()
    if sys.version_info >= (3, 11):
        from .setprofile import ProfileHooks

        return ProfileHooks()
    version = sys.version.split()[0]
    raise InstrumentError(f"usdtkit.instrument needs Python 3.11 or newer; this is {version}")
