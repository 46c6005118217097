"""Fields: the typed values behind ``--by arg1``, ``--by 'comm,str(arg0)'`` and friends.

A :class:`Field` names a value a probe hit carries (``arg3``, ``str(arg1)``, ``pid``, ``retval``...) from a
closed set.  Nothing here is ever pasted into C.  Filters, which compute with fields, are in
:mod:`usdtkit.expr.filters`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..errors import UsageError

FIELD_NAMES = ("pid", "tid", "uid", "gid", "comm", "cpu", "cgroup", "probe", "retval", "latency", "ustack")
MAX_ARGS = 12  # sys/sdt.h allows 12 arguments per USDT probe
COMM_LEN = 16  # the kernel's TASK_COMM_LEN: 15 bytes and a NUL
_ARG = re.compile(r"arg([0-9]|1[01])")
_STR_ARG = re.compile(r"str\(arg([0-9]|1[01])\)")


@dataclass(frozen=True)
class Field:
    """A value an event can carry or a key can hold: ``arg3``, ``str(arg1)``, ``pid``, ``latency``...

    ``str(argN)`` is the NUL-terminated string argument ``N`` points to (its first ``string_size`` bytes).
    """

    name: str
    index: int = -1  # argument index for argN and str(argN)

    def __post_init__(self) -> None:
        # Fields name struct members and array slots in generated C: only the closed set is a Field.
        if self.name in ("arg", "str"):
            if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index < MAX_ARGS:
                raise UsageError(f"argument index {self.index!r} out of range (0..{MAX_ARGS - 1})")
        elif self.name not in FIELD_NAMES or self.index != -1:
            raise UsageError(f"unknown field {self.name!r}: use arg0..arg11, str(argN), " + ", ".join(FIELD_NAMES))

    @classmethod
    def parse(cls, text: str) -> "Field":
        text = text.strip() if isinstance(text, str) else text
        if isinstance(text, str):
            match = _ARG.fullmatch(text)
            if match:
                return cls("arg", int(match.group(1)))
            match = _STR_ARG.fullmatch(text)
            if match:
                return cls("str", int(match.group(1)))
            if text in FIELD_NAMES:
                return cls(text)
        raise UsageError(f"unknown field {text!r}: use arg0..arg11, str(argN), " + ", ".join(FIELD_NAMES))

    @property
    def argument(self) -> Optional[int]:
        """The argument index this field reads, if any."""
        return self.index if self.name in ("arg", "str") else None

    @property
    def is_string(self) -> bool:
        """Whether the value is text (``comm``, ``str(argN)``)."""
        return self.name in ("comm", "str")

    @property
    def key_name(self) -> str:
        """A C identifier for this field as a struct member."""
        return f"str_arg{self.index}" if self.name == "str" else str(self)

    def __str__(self) -> str:
        if self.name == "arg":
            return f"arg{self.index}"
        if self.name == "str":
            return f"str(arg{self.index})"
        return self.name
