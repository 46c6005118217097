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
SIDES = ("start", "done")
# What a latency start keeps for its done: values of the start probe's own hit.
START_FIELDS = ("arg", "str", "pid", "tid", "comm", "cpu", "cgroup")


@dataclass(frozen=True)
class Field:
    """A value an event can carry or a key can hold: ``arg3``, ``str(arg1)``, ``pid``, ``latency``...

    ``str(argN)`` is the NUL-terminated string argument ``N`` points to (its first ``string_size`` bytes).
    In a latency trace values are taken where the time is (the done probe, a function's return);
    ``side="start"`` (``start.arg0``) takes the value at the start probe instead, kept with the start time.
    """

    name: str
    index: int = -1  # argument index for argN and str(argN)
    side: str = ""  # "start": the value at a latency trace's start probe

    def __post_init__(self) -> None:
        # Fields name struct members and array slots in generated C: only the closed set is a Field.
        if self.name in ("arg", "str"):
            if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index < MAX_ARGS:
                raise UsageError(f"argument index {self.index!r} out of range (0..{MAX_ARGS - 1})")
        elif self.name not in FIELD_NAMES or self.index != -1:
            raise UsageError(f"unknown field {self.name!r}: use arg0..arg11, str(argN), " + ", ".join(FIELD_NAMES))
        if self.side not in ("", "start"):
            raise UsageError(f"field side {self.side!r}: use 'start' or none")
        if self.side and self.name not in START_FIELDS:
            raise UsageError(f"{self}: the start probe keeps argN, str(argN), "
                             + ", ".join(START_FIELDS[2:]))

    @classmethod
    def parse(cls, text: str, sides: bool = False) -> "Field":
        """``arg3``, ``str(arg1)``, ``comm``...; with ``sides``, also ``start.FIELD`` and ``done.FIELD``
        (the same as ``FIELD``), which split latency histograms."""
        text = text.strip() if isinstance(text, str) else text
        if isinstance(text, str):
            side, dot, rest = text.partition(".")
            if dot and side in SIDES:
                if not sides:
                    raise UsageError(f"{text}: {side}.FIELD names a side of a latency trace; it splits latency "
                                     "histograms only (latency --by, hist_by= with latency=True)")
                plain = cls.parse(rest)
                return cls(plain.name, plain.index, "start") if side == "start" else plain
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
        name = f"str_arg{self.index}" if self.name == "str" else str(self.plain)
        return f"{self.side}_{name}" if self.side else name

    @property
    def plain(self) -> "Field":
        """The same field read where it is used (no side)."""
        return Field(self.name, self.index) if self.side else self

    def __str__(self) -> str:
        prefix = f"{self.side}." if self.side else ""
        if self.name == "arg":
            return f"{prefix}arg{self.index}"
        if self.name == "str":
            return f"{prefix}str(arg{self.index})"
        return prefix + self.name
