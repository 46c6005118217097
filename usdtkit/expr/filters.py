"""Filters as people write them: bpftrace's predicate language, parsed into a typed tree.

``arg0 > 5 && str(arg1) == "GET"``, ``(pid == 42 || comm == "nginx") && !(cpu & 1)``,
``(int32)retval < 0``.  The grammar is C's expressions without side effects, with C's precedence
(lowest first): ``||``, ``&&``, ``|``, ``^``, ``&``, ``== !=``, ``< <= > >=``, ``<< >>``, ``+ -``,
``* / %``, then the unary ``! ~ -`` and casts ``(int8)`` ... ``(uint64)``.  Values: integer literals
(decimal, ``0x``, ``0o``, ``0b``), string literals in double (or single) quotes with ``\\" \\\\ \\n \\t
\\xHH`` escapes, ``arg0``..``arg11``, ``str(EXPR)`` and ``str(EXPR, LEN)``, and the builtins ``pid tid
uid gid cpu cgroup comm retval``.

A mistake is one :class:`~usdtkit.errors.UsageError` naming the column where it is.  The text is only
ever read here; the code generator sees the tree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ..errors import UsageError
from .fields import MAX_ARGS
from .tree import CASTS, INT_BUILTINS, STRING_BUILTINS, Arg, Binary, Builtin, Cast, Int, Node, Str, Text, Unary

MAX_FILTER = 4096  # characters
MAX_NESTING = 32  # parentheses and unary operators inside each other
MAX_DEPTH = 200  # operators inside each other, chains included: the C compiler wants it modest

# Binary operators by precedence, lowest first (C's order).
LEVELS: Tuple[Tuple[str, ...], ...] = (
    ("||",), ("&&",), ("|",), ("^",), ("&",), ("==", "!="), ("<", "<=", ">", ">="), ("<<", ">>"), ("+", "-"),
    ("*", "/", "%"),
)
_PUNCT = sorted({op for level in LEVELS for op in level} | {"!", "~", "(", ")", ","}, key=len, reverse=True)
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|[0-9]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "\\": b"\\", '"': b'"', "'": b"'"}


@dataclass(frozen=True)
class Token:
    kind: str  # "num", "str", "name", "op", "end"
    text: str
    column: int  # 1-based
    value: object = None


class FilterSyntaxError(UsageError):
    """A filter that does not parse or type-check; the message names the column."""


def _fail(source: str, column: int, message: str) -> FilterSyntaxError:
    return FilterSyntaxError(f"filter {source!r}, column {column}: {message}")


def _string(source: str, start: int) -> Tuple[bytes, int]:
    """The string literal opening at ``start``: its bytes and the index after its closing quote."""
    quote = source[start]
    out = bytearray()
    i = start + 1
    while i < len(source):
        char = source[i]
        if char == quote:
            return bytes(out), i + 1
        if char == "\\":
            if i + 1 >= len(source):
                break
            nxt = source[i + 1]
            if nxt in _ESCAPES:
                out += _ESCAPES[nxt]
                i += 2
                continue
            if nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", source[i + 2:i + 4]):
                byte = int(source[i + 2:i + 4], 16)
                if byte == 0:
                    raise _fail(source, i + 1, "a string cannot hold a NUL byte")
                out.append(byte)
                i += 4
                continue
            raise _fail(source, i + 1, f"unknown escape '\\{nxt}' (use \\\" \\\\ \\n \\t \\r or \\xHH)")
        out += char.encode()
        i += 1
    raise _fail(source, start + 1, "string literal is not closed")


def tokenize(source: str) -> List[Token]:
    """Split ``source`` into tokens, refusing any character the grammar does not use."""
    tokens: List[Token] = []
    i = 0
    while i < len(source):
        char = source[i]
        if char in " \t":
            i += 1
            continue
        column = i + 1
        if char in "\"'":
            value, end = _string(source, i)
            tokens.append(Token("str", source[i:end], column, value))
            i = end
            continue
        match = _NUMBER.match(source, i)
        if match:
            text = match.group()
            if _NAME.match(source, match.end()):
                raise _fail(source, column, f"{source[i:_NAME.match(source, match.end()).end()]!r} is not a number")
            if len(text) > 1 and text[0] == "0" and text[1].isdigit():
                raise _fail(source, column, f"{text!r}: leading zeros are not allowed (octal is 0o{text[1:]})")
            tokens.append(Token("num", text, column, int(text, 0)))
            i = match.end()
            continue
        match = _NAME.match(source, i)
        if match:
            tokens.append(Token("name", match.group(), column))
            i = match.end()
            continue
        for op in _PUNCT:
            if source.startswith(op, i):
                tokens.append(Token("op", op, column))
                i += len(op)
                break
        else:
            if char == "=":
                raise _fail(source, column, "'=' assigns; compare with '=='")
            shown = char if char.isprintable() else repr(char)
            raise _fail(source, column, f"unexpected character {shown!r}")
    tokens.append(Token("end", "", len(source) + 1))
    return tokens


class _Parser:
    """A recursive-descent parser over the tokens, one method per precedence level."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.at = 0
        self.depth = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.at]

    def fail(self, message: str, token: Optional[Token] = None) -> FilterSyntaxError:
        return _fail(self.source, (token or self.token).column, message)

    def take(self) -> Token:
        token = self.token
        self.at += 1
        return token

    def expect(self, text: str, what: str) -> Token:
        if self.token.kind != "op" or self.token.text != text:
            found = f"'{self.token.text}'" if self.token.kind != "end" else "the end"
            raise self.fail(f"expected '{text}' {what}, found {found}")
        return self.take()

    def make(self, token: Token, build: "type", *args: object) -> Node:
        """Build a node, turning its own type check into an error at ``token``'s column."""
        try:
            return build(*args)
        except FilterSyntaxError:
            raise
        except UsageError as exc:
            raise self.fail(str(exc), token) from None

    def parse(self) -> Node:
        if self.token.kind == "end":
            raise self.fail("the filter is empty")
        node = self.binary(0)
        if self.token.kind != "end":
            raise self.fail(f"unexpected '{self.token.text}' (an operator is missing?)")
        if node.is_string:
            raise _fail(self.source, 1, "a filter is a condition; compare the string, e.g. comm == \"nginx\"")
        if depth(node) > MAX_DEPTH:
            raise _fail(self.source, 1, f"more than {MAX_DEPTH} operators inside each other")
        return node

    def binary(self, level: int) -> Node:
        if level == len(LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while self.token.kind == "op" and self.token.text in LEVELS[level]:
            op = self.take()
            if self.token.kind == "end":
                raise self.fail(f"expected a value after '{op.text}'")
            right = self.binary(level + 1)
            node = self.make(op, Binary, op.text, node, right)
        return node

    def nest(self, token: Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.fail(f"nested more than {MAX_NESTING} levels deep", token)

    def unary(self) -> Node:
        token = self.token
        if token.kind == "op" and token.text in ("!", "~", "-"):
            self.take()
            self.nest(token)
            operand = self.unary()
            self.depth -= 1
            if token.text == "-" and isinstance(operand, Int) and operand.value <= (1 << 63):
                return Int(-operand.value)  # a negative literal, typed signed
            return self.make(token, Unary, token.text, operand)
        if (token.kind == "op" and token.text == "(" and self.tokens[self.at + 1].kind == "name"
                and self.tokens[self.at + 1].text in CASTS and self.tokens[self.at + 2].text == ")"):
            self.at += 3
            return self.make(token, Cast, self.tokens[self.at - 2].text, self.unary())
        return self.primary()

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "num":
            return self.make(token, Int, token.value)
        if token.kind == "str":
            return self.make(token, Text, token.value)
        if token.kind == "op" and token.text == "(":
            self.nest(token)
            node = self.binary(0)
            self.depth -= 1
            self.expect(")", f"to close the '(' at column {token.column}")
            return node
        if token.kind == "name":
            return self.name(token)
        if token.kind == "end":
            raise self.fail("expected a value, found the end", token)
        raise self.fail(f"expected a value, found '{token.text}'", token)

    def name(self, token: Token) -> Node:
        name = token.text
        match = re.fullmatch(r"arg([0-9]+)", name)
        if match:
            index = int(match.group(1))
            if index >= MAX_ARGS:
                raise self.fail(f"{name}: probes have at most {MAX_ARGS} arguments (arg0..arg{MAX_ARGS - 1})", token)
            return Arg(index)
        if name == "str":
            self.expect("(", "after str")
            pointer = self.binary(0)
            size = None
            if self.token.kind == "op" and self.token.text == ",":
                self.take()
                length = self.take()
                if length.kind != "num":
                    raise self.fail("str(PTR, LEN) takes a number as LEN", length)
                size = length.value
            self.expect(")", "to close str(")
            return self.make(token, Str, pointer, size)
        if name in INT_BUILTINS or name in STRING_BUILTINS:
            return Builtin(name)
        if name in CASTS:
            raise self.fail(f"a cast is written ({name})EXPR", token)
        if self.token.kind == "op" and self.token.text == "(":
            raise self.fail(f"unknown function {name!r}: the only function is str()", token)
        raise self.fail(f"unknown name {name!r}: use arg0..arg{MAX_ARGS - 1}, str(argN), "
                        f"{' '.join(INT_BUILTINS + STRING_BUILTINS)}; strings are quoted (\"{name}\")", token)


@dataclass(frozen=True)
class Filter:
    """A parsed filter: the text as given and its typed tree (:mod:`usdtkit.expr.tree`).

    Two filters are equal when their trees are; ``str()`` gives the text back."""

    text: str = field(compare=False)
    root: Node

    @classmethod
    def parse(cls, text: str) -> "Filter":
        """Parse ``text``, raising :class:`FilterSyntaxError` with the column of the first mistake."""
        if not isinstance(text, str):
            raise UsageError(f"a filter is text like 'arg0 > 5', not {type(text).__name__}")
        if len(text) > MAX_FILTER:
            raise UsageError(f"filter longer than {MAX_FILTER} characters")
        for index, char in enumerate(text):
            if ord(char) < 0x20 or ord(char) == 0x7F:
                raise _fail(text, index + 1, "control characters are not allowed")
        return cls(text, _Parser(text).parse())

    @classmethod
    def of(cls, root: Node) -> "Filter":
        """A filter made in code from a tree (shown as its rendering)."""
        if not isinstance(root, Node) or root.is_string:
            raise UsageError("a filter is an integer condition")
        return cls(render(root), root)

    def __str__(self) -> str:
        return self.text


def depth(node: Node) -> int:
    """How many nodes deep the tree is (counted without recursion: trees can be long chains)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in current.children())
    return deepest


def render(node: Node) -> str:
    """The tree as filter text (fully parenthesised), for messages and filters built in code."""
    if isinstance(node, Int):
        return str(node.value)
    if isinstance(node, Text):
        return '"' + "".join(c if " " <= c <= "~" and c not in '"\\' else f"\\x{ord(c):02x}"
                             for c in node.value.decode("latin-1")) + '"'
    if isinstance(node, Builtin):
        return node.name
    if isinstance(node, Arg):
        return f"arg{node.index}"
    if isinstance(node, Str):
        return f"str({render(node.pointer)}" + (f", {node.size})" if node.size is not None else ")")
    if isinstance(node, Cast):
        return f"({node.to}){render(node.operand)}"
    if isinstance(node, Unary):
        return f"{node.op}{render(node.operand)}"
    if isinstance(node, Binary):
        return f"({render(node.left)} {node.op} {render(node.right)})"
    raise UsageError(f"not a filter node: {node!r}")
