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
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..errors import UsageError

KINDS = ("usdt", "uprobe", "uretprobe")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
# Function symbols may carry C++/Rust mangling characters and a GNU version suffix.
_SYMBOL = re.compile(r"[A-Za-z_.$][A-Za-z0-9_.$@]{0,1023}")
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

    @property
    def is_usdt(self) -> bool:
        return self.kind == "usdt"

    @property
    def is_return(self) -> bool:
        return self.kind == "uretprobe"

    def __str__(self) -> str:
        if self.is_usdt:
            middle = f"{self.provider}:{self.name}" if self.provider else self.name
        elif self.address is not None:
            middle = f"{self.address:#x}"
        else:
            middle = self.name + (f"+{self.offset:#x}" if self.offset else "")
        return f"{self.kind}:{self.binary}:{middle}"


def _check_binary(spec: str, binary: str) -> None:
    if not _BINARY.fullmatch(binary):
        raise UsageError(f"probe {spec!r}: invalid binary path")


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
            if part is not None and not _IDENT.fullmatch(part):
                raise UsageError(f"probe {spec!r}: {part!r} is not a valid provider or probe name")
        return ProbeRef(kind, binary, name, provider)
    binary, sep, target = rest.rpartition(":")
    if not sep:
        raise UsageError(f"probe {spec!r}: expected {kind}:BINARY:FUNCTION")
    _check_binary(spec, binary)
    if _NUMBER.fullmatch(target) and target.startswith("0x"):
        address = int(target, 16)
        if address >= 1 << 63:
            raise UsageError(f"probe {spec!r}: address {target} out of range")
        return ProbeRef(kind, binary, target, address=address)
    name, plus, offset_text = target.partition("+")
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
