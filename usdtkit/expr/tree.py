"""The typed tree of a filter expression: the only form in which a filter reaches the code generator.

Every node checks its own values when it is made (an argument index in range, an operator from the
closed set, a literal that fits in 64 bits, string bytes without NUL), so a tree that exists is one
the code generator may turn into C.  Types are settled here too: a node is an integer or a string, and
an integer is signed or unsigned once the probe is known (USDT arguments carry their signedness in the
probe's notes; see :mod:`usdtkit.bpf.filter_c`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

from ..errors import UsageError
from .fields import COMM_LEN, MAX_ARGS, Field

INT_BUILTINS = ("pid", "tid", "uid", "gid", "cpu", "cgroup", "retval")
STRING_BUILTINS = ("comm",)
ARITHMETIC = ("+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>")
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
LOGICAL = ("&&", "||")
UNARY = ("-", "~", "!")
CASTS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
MAX_STRING = 255  # bytes of a string literal or of str(argN, LEN)


class Node:
    """A node of the tree; subclasses are frozen dataclasses."""

    is_string = False

    def children(self) -> Tuple["Node", ...]:
        return ()

    def walk(self) -> Iterator["Node"]:
        """This node and every node below it, parents first."""
        yield self
        for child in self.children():
            yield from child.walk()

    def fields(self) -> Tuple[Field, ...]:
        """The event fields the expression reads (``arg2``, ``str(arg1)``, ``retval``, ``comm``...)."""
        found = []
        for node in self.walk():
            if isinstance(node, Arg):
                found.append(Field("arg", node.index))
            elif isinstance(node, Str) and isinstance(node.pointer, Arg):
                found.append(Field("str", node.pointer.index))
            elif isinstance(node, Builtin):
                found.append(Field(node.name))
        return tuple(dict.fromkeys(found))


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Int(Node):
    """An integer literal: signed 64-bit, or unsigned when it only fits in 64 bits unsigned."""

    value: int

    def __post_init__(self) -> None:
        if not _int(self.value) or not -(1 << 63) <= self.value < (1 << 64):
            raise UsageError(f"integer {self.value!r} does not fit in 64 bits")

    @property
    def signed(self) -> bool:
        return self.value < (1 << 63)


@dataclass(frozen=True)
class Text(Node):
    """A string literal, as bytes (never pasted into C: compared as integer words)."""

    value: bytes
    is_string = True

    def __post_init__(self) -> None:
        if not isinstance(self.value, bytes) or b"\0" in self.value or len(self.value) > MAX_STRING:
            raise UsageError(f"string literals hold at most {MAX_STRING} bytes and no NUL")


@dataclass(frozen=True)
class Builtin(Node):
    """A value of the hit itself: ``pid tid uid gid cpu cgroup retval`` (integers) or ``comm`` (text)."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in INT_BUILTINS + STRING_BUILTINS:
            raise UsageError(f"unknown builtin {self.name!r}")

    @property
    def is_string(self) -> bool:  # type: ignore[override]
        return self.name in STRING_BUILTINS


@dataclass(frozen=True)
class Arg(Node):
    """Argument ``index`` of the probe (a USDT argument or a function's register argument)."""

    index: int

    def __post_init__(self) -> None:
        if not _int(self.index) or not 0 <= self.index < MAX_ARGS:
            raise UsageError(f"argument index {self.index!r} out of range (0..{MAX_ARGS - 1})")


@dataclass(frozen=True)
class Str(Node):
    """``str(POINTER)`` or ``str(POINTER, LEN)``: the NUL-terminated string at an address of the
    traced process, whole, or cut to its first ``size`` bytes (as bpftrace's ``str(p, n)``)."""

    pointer: Node
    size: Optional[int] = None
    is_string = True

    def __post_init__(self) -> None:
        if not isinstance(self.pointer, Node) or self.pointer.is_string:
            raise UsageError("str() reads from an address: give it an integer such as argN")
        if self.size is not None and (not _int(self.size) or not 1 <= self.size <= MAX_STRING):
            raise UsageError(f"str() length must be 1 to {MAX_STRING}")

    def children(self) -> Tuple[Node, ...]:
        return (self.pointer,)


@dataclass(frozen=True)
class Cast(Node):
    """``(int32)EXPR``: the low bits of an integer, sign- or zero-extended back to 64 bits."""

    to: str
    operand: Node

    def __post_init__(self) -> None:
        if self.to not in CASTS:
            raise UsageError(f"unknown type {self.to!r}: use " + ", ".join(CASTS))
        if not isinstance(self.operand, Node) or self.operand.is_string:
            raise UsageError(f"({self.to}) converts integers, not strings")

    @property
    def bits(self) -> int:
        return int(self.to.lstrip("uint"))

    @property
    def signed(self) -> bool:
        return not self.to.startswith("u")

    def children(self) -> Tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class Unary(Node):
    """``-X``, ``~X`` or ``!X`` on an integer."""

    op: str
    operand: Node

    def __post_init__(self) -> None:
        if self.op not in UNARY:
            raise UsageError(f"unknown operator {self.op!r}")
        if not isinstance(self.operand, Node) or self.operand.is_string:
            raise UsageError(f"'{self.op}' takes an integer, not a string")

    def children(self) -> Tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class Binary(Node):
    """``LEFT OP RIGHT``.  Strings take ``==`` and ``!=`` only, between ``str(...)`` or ``comm`` and a
    literal; everything else is integer arithmetic, comparison or logic."""

    op: str
    left: Node
    right: Node

    def __post_init__(self) -> None:
        if self.op not in ARITHMETIC + COMPARISONS + LOGICAL:
            raise UsageError(f"unknown operator {self.op!r}")
        if not isinstance(self.left, Node) or not isinstance(self.right, Node):
            raise UsageError(f"'{self.op}' needs two operands")
        strings = (self.left.is_string, self.right.is_string)
        if any(strings):
            if self.op not in ("==", "!="):
                raise UsageError(f"strings take == and !=, not '{self.op}'")
            if not all(strings):
                raise UsageError(f"'{self.op}' compares a string with an integer")
            if isinstance(self.left, Text) == isinstance(self.right, Text):
                raise UsageError("compare str(...) or comm with a string literal")
            literal = self.text
            if (isinstance(self.left, Builtin) or isinstance(self.right, Builtin)) and len(literal) >= COMM_LEN:
                raise UsageError(f"comm holds at most {COMM_LEN - 1} bytes: {literal.decode(errors='replace')!r} "
                                 "never matches")
        if self.op in ("/", "%") and isinstance(self.right, Int) and self.right.value == 0:
            raise UsageError(f"'{self.op}' by zero")
        if self.op in ("<<", ">>") and isinstance(self.right, Int) and not 0 <= self.right.value < 64:
            raise UsageError(f"shift by {self.right.value}: use 0 to 63")

    @property
    def is_string_comparison(self) -> bool:
        return self.left.is_string

    @property
    def text(self) -> bytes:
        """The literal of a string comparison."""
        side = self.left if isinstance(self.left, Text) else self.right
        return side.value if isinstance(side, Text) else b""

    @property
    def string_side(self) -> Node:
        """The non-literal side of a string comparison (``str(...)`` or ``comm``)."""
        return self.right if isinstance(self.left, Text) else self.left

    def children(self) -> Tuple[Node, ...]:
        return (self.left, self.right)


def conjuncts(node: Node) -> Tuple[Node, ...]:
    """The terms of a top-level ``A && B && C`` (the node itself when it is not a conjunction)."""
    if isinstance(node, Binary) and node.op == "&&":
        return conjuncts(node.left) + conjuncts(node.right)
    return (node,)


def both(nodes: Tuple[Node, ...]) -> Optional[Node]:
    """The conjunction of ``nodes`` (None for none)."""
    result: Optional[Node] = None
    for node in nodes:
        result = node if result is None else Binary("&&", result, node)
    return result
