"""USDT probes known to misbehave in particular builds, so that a trace which cannot see what it asks for
says so instead of quietly counting nothing.

A probe's note only says where the probe is, not whether the program still fires it faithfully.  The
table :data:`KNOWN_ISSUES` holds what was measured: which probe, how to recognise the binaries concerned,
why the probe misleads there, and what to use instead.  A binary is recognised from facts its ELF file
carries (a version the program exports), never from a build-id, so every build of an affected release
matches, whichever distribution made it.

**Recognising CPython.**  Since 3.11 the interpreter exports ``Py_Version``, a constant ``unsigned long``
holding ``PY_VERSION_HEX``: major, minor and micro version in its three high bytes (``0x030B02F0`` is
3.11.2 final).  It lives in whichever object carries the probes: the executable of a static build
(Debian's ``/usr/bin/python3.11``) or ``libpython3.X.so`` of a shared one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import ElfError
from .image import ElfImage
from .symbols import symbol_addresses

Version = Tuple[int, ...]


@dataclass(frozen=True)
class KnownIssue:
    """One probe that misleads in the releases ``first``..``last`` (inclusive, compared on the leading
    components given) of ``runtime``."""

    provider: str
    name: str
    runtime: str
    first: Version
    last: Version
    reason: str
    alternative: str

    def covers(self, version: Version) -> bool:
        return self.first <= version[: len(self.first)] and version[: len(self.last)] <= self.last


KNOWN_ISSUES: Tuple[KnownIssue, ...] = (
    KnownIssue(
        "python", "function__entry", "CPython", (3, 11), (3, 11),
        "fires only for frames entered from C, not for Python-to-Python calls (python/cpython#98894): "
        "entry counts and entry-to-return pairs miss nearly every call",
        "count calls with python:function__return (it fires for every return), or trace python:line as well: "
        "its semaphore sends 3.11 down its tracing path, where function__entry fires for every call",
    ),
)


def cpython_version(image: ElfImage) -> Optional[Version]:
    """``(major, minor, micro)`` from the ``Py_Version`` CPython 3.11+ exports, or None."""
    address = symbol_addresses(image, {"Py_Version"}, debug_files=False).get("Py_Version")  # exported
    if address is None:
        return None
    offset = image.vaddr_to_offset(address)
    if offset is None:
        return None
    try:
        raw = image.read(offset, image.addr_size, "Py_Version")
    except ElfError:
        return None
    value = int.from_bytes(raw, "little" if image.little_endian else "big")
    version = (value >> 24 & 0xFF, value >> 16 & 0xFF, value >> 8 & 0xFF)
    return version if version[0] == 3 else None


#: How each runtime named in the table is recognised from an ELF image.
RECOGNISERS: Dict[str, Callable[[ElfImage], Optional[Version]]] = {"CPython": cpython_version}


def _entries(provider: str, name: str) -> List[KnownIssue]:
    return [i for i in KNOWN_ISSUES if i.provider == provider and i.name == name]


def describe(issue: KnownIssue, version: Version) -> str:
    """One line: the probe, the runtime release, why it misleads and what to use instead."""
    release = ".".join(map(str, version))
    probe = f"{issue.provider}:{issue.name}"
    return f"{probe} in {issue.runtime} {release} {issue.reason}; instead, {issue.alternative}"


def issues_in_image(image: ElfImage, provider: str, name: str) -> List[str]:
    """The known issues of probe ``provider:name`` in the open ``image``, one line each."""
    out = []
    versions: Dict[str, Optional[Version]] = {}
    for issue in _entries(provider, name):
        if issue.runtime not in versions:
            versions[issue.runtime] = RECOGNISERS[issue.runtime](image)
        version = versions[issue.runtime]
        if version is not None and issue.covers(version):
            out.append(describe(issue, version))
    return out


def known_issues(path: str, provider: str, name: str) -> List[str]:
    """One-line warnings for tracing USDT probe ``provider:name`` of the ELF file at ``path`` (empty when
    the probe is not known to misbehave there, or the file cannot be read)."""
    if not _entries(provider, name):
        return []
    try:
        with ElfImage(path) as image:
            return [f"{path}: {line}" for line in issues_in_image(image, provider, name)]
    except ElfError:
        return []
