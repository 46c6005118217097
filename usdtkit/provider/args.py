"""Declared argument types, names, and the checks and conversions of fired values.

A probe argument is one 64-bit register at the USDT site; its declared type tells the tracer how
many low bytes to read and whether they are signed (``int8`` ... ``uint64``, the ``stapsdt.ArgTypes``
members), or that the register holds a pointer to a NUL-terminated string.  Python values are
checked against the declared type and refused (``TypeError``/``ValueError``) rather than truncated.

The functions named ``*_arg`` are the slow paths of conversion: the generated fire functions
(:mod:`.firing`) inline the common cases and call these only for unusual values, or to raise.
"""
from __future__ import annotations

import ctypes
import re
from typing import TYPE_CHECKING, Any, List, Optional, Tuple, Union

from .abi import arg_types

if TYPE_CHECKING:
    from stapsdt import ArgTypes

MAX_NAME_LENGTH = 64
MAX_STRING_BYTES = 4096

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

ArgType = Union[type, "ArgTypes"]


class Arg:
    """One declared argument: how it is checked, passed and described."""

    __slots__ = ("declared", "code", "kind", "low", "high", "wide")

    def __init__(self, declared: ArgType, code: "ArgTypes", kind: str) -> None:
        self.declared = declared
        self.code = code
        self.kind = kind  # "int", "bool" or "str"
        size = abs(int(code))
        self.wide = kind == "int" and size == 8
        if kind == "str":
            self.low, self.high = 0, 0
        elif int(code) < 0:
            self.low, self.high = -(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1
        else:
            self.low, self.high = 0, (1 << (8 * size)) - 1

    @property
    def label(self) -> str:
        if isinstance(self.declared, type):
            return self.declared.__name__
        return self.code.name


def resolve_arg(declared: Any) -> Arg:
    """The :class:`Arg` for a declared type: ``int``, ``bool``, ``str``, ``bytes`` or a fixed width."""
    widths = arg_types()
    if declared is bool:
        return Arg(bool, widths.uint8, "bool")
    if declared is int:
        return Arg(int, widths.int64, "int")
    if declared is str or declared is bytes:
        return Arg(declared, widths.uint64, "str")
    if isinstance(declared, widths) and declared is not widths.noarg:
        return Arg(declared, declared, "int")
    raise TypeError(
        f"unsupported probe argument type {declared!r}: use int, bool, str, bytes or a fixed "
        "width such as usdtkit.provider.uint8 (stapsdt.ArgTypes)"
    )


def check_name(name: Any, what: str) -> str:
    """``name`` if it is a valid provider, probe or span name, else ``TypeError``/``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be a str, not {type(name).__name__}")
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.match(name):
        raise ValueError(
            f"invalid {what} name {name!r}: use [A-Za-z_][A-Za-z0-9_]*, "
            f"at most {MAX_NAME_LENGTH} characters"
        )
    return name


def _ints_are_sign_extended() -> bool:
    """Whether a Python int passed without argtypes arrives sign-extended to 64 bits (libffi does
    this on x86_64); if not, every 8-byte argument is boxed."""
    try:
        llabs = ctypes.CDLL(None).llabs
        llabs.restype = ctypes.c_longlong
        return llabs(-5) == 5 and llabs(-(2**31)) == 2**31 and llabs(2**31 - 1) == 2**31 - 1
    except (OSError, AttributeError):
        return False


INT_FAST = _ints_are_sign_extended()

Context = Tuple[str, List[Arg]]  # ("provider:probe", declared arguments), for messages


def int_arg(ctx: Context, index: int, value: Any) -> int:
    label, args = ctx
    spec = args[index]
    if isinstance(value, (str, bytes, float)) or not hasattr(type(value), "__index__"):
        raise TypeError(
            f"probe {label}: argument {index + 1} ({spec.label}) must be an int, "
            f"not {type(value).__name__}"
        )
    number = value.__index__()
    if not spec.low <= number <= spec.high:
        raise ValueError(
            f"probe {label}: argument {index + 1} ({spec.label}) = {number} is out of range "
            f"[{spec.low}, {spec.high}]"
        )
    return number


def wide_arg(ctx: Context, index: int, value: Any) -> Any:
    """An 8-byte argument outside the C ``int`` range (or not an exact int): check it, then box it
    in a 64-bit ctypes integer so all 64 bits reach the register."""
    number = int_arg(ctx, index, value)
    if INT_FAST and -(2**31) <= number < 2**31:
        return number
    return (ctypes.c_int64 if int(ctx[1][index].code) < 0 else ctypes.c_uint64)(number)


def bool_arg(ctx: Context, index: int, value: Any) -> int:
    label, args = ctx
    if hasattr(type(value), "__index__") and not isinstance(value, (str, bytes)):
        number = value.__index__()
        if number in (0, 1):
            return number
    raise TypeError(
        f"probe {label}: argument {index + 1} (bool) must be a bool (or 0/1), not {value!r}"
    )


def _cut(data: bytes, from_text: bool) -> bytes:
    data = data[:MAX_STRING_BYTES]
    if from_text:  # do not leave half a UTF-8 character at the end
        data = data.decode("utf-8", "ignore").encode("utf-8")
    return data


def str_arg(ctx: Context, index: int, value: Any) -> Optional[bytes]:
    label, args = ctx
    if value is None:
        return None
    from_text = isinstance(value, str)
    if from_text:
        data = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        raise TypeError(
            f"probe {label}: argument {index + 1} ({args[index].label}) must be str or bytes, "
            f"not {type(value).__name__}"
        )
    if 0 in data:
        raise ValueError(
            f"probe {label}: argument {index + 1} ({args[index].label}) contains a NUL byte, "
            "which a C string cannot carry"
        )
    return _cut(data, from_text) if len(data) > MAX_STRING_BYTES else data
