"""Probe specs as users write them, parsed and validated before anything else happens.

The syntax is bpftrace's:

* ``usdt:BINARY:PROVIDER:NAME`` (``usdt:BINARY:NAME`` when the name is unique in the binary);
* ``uprobe:BINARY:FUNCTION`` or ``uprobe:BINARY:FUNCTION+OFFSET`` or ``uprobe:BINARY:0xADDRESS``;
* ``uretprobe:BINARY:FUNCTION``.

``BINARY`` is a path or a library name (``libc``), or empty when a PID says where to look
(``usdt::python:function__entry`` with ``-p PID``).  Names are checked against strict patterns here, so
a hostile spec (quotes, semicolons, newlines, ``#include``) is refused with a clear message before any
file is opened.  Nothing from a spec ever reaches generated C: names only select call sites, and the
code generator writes numbers.

Provider, probe and function names may be globs (:mod:`usdtkit.elf.glob`: ``*``, ``?``, ``[...]``):
``usdt:BIN:hello:*``, ``usdt:BIN:*:*__start``, ``uprobe:libc:mall*``.  A C++ function is named by its
demangled name, as bpftrace does, after ``cpp:`` (``uprobe:BIN:cpp:ns::Cache::get``, a glob too) or
simply with a ``::`` in it; in double quotes (``cpp:"ns::f(int)"``) the name is taken literally.  Such a
spec is a pattern (:attr:`ProbeRef.is_pattern`): it stands for every probe or function it matches, and
is expanded when the trace is planned.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..elf.glob import compile_glob, has_glob
from ..errors import UsageError

KINDS = ("usdt", "uprobe", "uretprobe")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
# Function symbols may carry C++/Rust mangling characters and a GNU version suffix.
_SYMBOL = re.compile(r"[A-Za-z_.$][A-Za-z0-9_.$@]{0,1023}")
_IDENT_GLOB = re.compile(r"[A-Za-z0-9_*?\[\]!-]{1,255}")
_SYMBOL_GLOB = re.compile(r"[A-Za-z0-9_.$*?\[\]!-]{1,1024}")
# Demangled C++ names hold spaces, commas, brackets and operators; never a quote or a backslash.
_CPP_NAME = re.compile(r'[^\x00-\x1f\x7f"\\]{1,4096}')
CPP_PREFIX = "cpp:"
_NUMBER = re.compile(r"(?:0x[0-9a-fA-F]{1,16}|[0-9]{1,20})")
_BINARY = re.compile(r"[^\x00-\x1f\x7f:]{0,4096}")


@dataclass(frozen=True)
class ProbeRef:
    """A parsed probe spec: what the user asked for, not yet resolved to call sites."""

    kind: str
    binary: str
    name: str
    provider: Optional[str] = None
    offset: int = 0
    address: Optional[int] = None
    cpp: bool = False  # ``name`` is a demangled C++ name (or a pattern of them)
    literal: bool = False  # ``name`` was quoted: no glob characters in it

    @property
    def is_usdt(self) -> bool:
        return self.kind == "usdt"

    @property
    def is_pattern(self) -> bool:
        """Whether this spec may stand for several probes (a glob, or a C++ name: overloads)."""
        if self.cpp:
            return True
        return not self.literal and any(has_glob(part) for part in (self.provider or "", self.name))

    @property
    def is_return(self) -> bool:
        return self.kind == "uretprobe"

    def __str__(self) -> str:
        if self.is_usdt:
            middle = f"{self.provider}:{self.name}" if self.provider else self.name
        elif self.address is not None:
            middle = f"{self.address:#x}"
        elif self.cpp:
            middle = CPP_PREFIX + (f'"{self.name}"' if self.literal else self.name)
        else:
            middle = self.name + (f"+{self.offset:#x}" if self.offset else "")
        return f"{self.kind}:{self.binary}:{middle}"


def _check_binary(spec: str, binary: str) -> None:
    if not _BINARY.fullmatch(binary):
        raise UsageError(f"probe {spec!r}: invalid binary path")


def _check_glob(spec: str, pattern: str) -> None:
    try:
        compile_glob(pattern)
    except re.error as exc:
        raise UsageError(f"probe {spec!r}: {pattern!r} is not a valid glob ({exc})") from None


def _check_usdt_part(spec: str, part: str) -> None:
    """A provider or probe name: an identifier, or a glob of identifier characters."""
    if _IDENT.fullmatch(part):
        return
    if has_glob(part) and _IDENT_GLOB.fullmatch(part):
        _check_glob(spec, part)
        return
    raise UsageError(f"probe {spec!r}: {part!r} is not a valid provider or probe name")


def _cpp_ref(spec: str, kind: str, binary: str, target: str) -> ProbeRef:
    """``cpp:NAME``, ``cpp:"NAME"``, a name with ``::`` or a quoted name."""
    cpp = target.startswith(CPP_PREFIX)
    if cpp:
        target = target[len(CPP_PREFIX):]
    literal = len(target) >= 2 and target[0] == target[-1] == '"'
    name = target[1:-1] if literal else target
    if not cpp and "::" not in name:
        if not _SYMBOL.fullmatch(name):
            raise UsageError(f"probe {spec!r}: {name!r} is not a valid function name")
        return ProbeRef(kind, binary, name)
    if not _CPP_NAME.fullmatch(name):
        raise UsageError(f"probe {spec!r}: {name!r} is not a valid C++ function name (quotes may only "
                         "enclose the whole name)")
    if not literal:
        _check_glob(spec, name)
    return ProbeRef(kind, binary, name, cpp=True, literal=literal)


def parse_probe(spec: str) -> ProbeRef:
    """Parse and validate a probe spec, raising :class:`UsageError` with the reason."""
    if not isinstance(spec, str) or not spec or len(spec) > 8192:
        raise UsageError("empty or oversized probe spec")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in spec):
        raise UsageError(f"probe {spec!r}: control characters are not allowed")
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS:
        raise UsageError(
            f"probe {spec!r}: expected usdt:BINARY:PROVIDER:NAME, uprobe:BINARY:FUNCTION "
            "or uretprobe:BINARY:FUNCTION"
        )
    if kind == "usdt":
        parts = rest.split(":")
        if len(parts) == 3:
            binary, provider, name = parts
        elif len(parts) == 2:
            binary, name = parts
            provider = None
        else:
            raise UsageError(f"probe {spec!r}: expected usdt:BINARY:PROVIDER:NAME")
        _check_binary(spec, binary)
        for part in (provider, name):
            if part is not None:
                _check_usdt_part(spec, part)
        return ProbeRef(kind, binary, name, provider)
    binary, sep, target = rest.partition(":")
    if not sep:
        raise UsageError(f"probe {spec!r}: expected {kind}:BINARY:FUNCTION")
    _check_binary(spec, binary)
    if target.startswith(CPP_PREFIX) or target.startswith('"') or "::" in target:
        return _cpp_ref(spec, kind, binary, target)
    if _NUMBER.fullmatch(target) and target.startswith("0x"):
        address = int(target, 16)
        if address >= 1 << 63:
            raise UsageError(f"probe {spec!r}: address {target} out of range")
        return ProbeRef(kind, binary, target, address=address)
    name, plus, offset_text = target.partition("+")
    if has_glob(name):
        if not _SYMBOL_GLOB.fullmatch(name):
            raise UsageError(f"probe {spec!r}: {name!r} is not a valid function name pattern (a pattern "
                             "matches names without their @VERSION)")
        if plus:
            raise UsageError(f"probe {spec!r}: an offset applies to one function, not to a pattern")
        _check_glob(spec, name)
        return ProbeRef(kind, binary, name)
    if not _SYMBOL.fullmatch(name):
        raise UsageError(f"probe {spec!r}: {name!r} is not a valid function name")
    offset = 0
    if plus:
        if not _NUMBER.fullmatch(offset_text):
            raise UsageError(f"probe {spec!r}: offset {offset_text!r} is not a number")
        offset = int(offset_text, 0)
        if offset >= 1 << 32:
            raise UsageError(f"probe {spec!r}: offset {offset_text} is larger than any function")
        if kind == "uretprobe" and offset:
            raise UsageError(f"probe {spec!r}: a uretprobe takes no offset")
    return ProbeRef(kind, binary, name, offset=offset)
