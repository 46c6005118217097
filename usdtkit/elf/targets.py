"""Targets given as a path or a library name, resolved to an absolute path.

A user says ``postgres``' path, or just ``libc``, ``c``, ``libpython3.11.so`` or ``libstdc++``.  Library
names are resolved the way the dynamic loader finds a ``DT_NEEDED`` entry: the directories of
``LD_LIBRARY_PATH`` first, then the loader cache (``/etc/ld.so.cache``, read through ``ldconfig -p``),
then the default directories.  A bare name ``c`` means ``libc``; ``libc`` means the first of
``libc.so``, ``libc.so.N...`` that exists; a name already containing ``.so`` is tried as is.  Only
objects for this machine's architecture qualify (the cache also lists 32-bit libraries).
"""
from __future__ import annotations

import os
import re
import sys
from functools import lru_cache
from typing import List, Optional, Tuple

from ..errors import TargetError

#: The loader's default directories, after the cache (Debian multiarch first).
DEFAULT_DIRS: Tuple[str, ...] = (
    "/lib/{multiarch}",
    "/usr/lib/{multiarch}",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
)
_MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "i686": "i386-linux-gnu"}
_MACHINE_OF_UNAME = {"x86_64": 62, "aarch64": 183, "i686": 3, "i386": 3, "armv7l": 40, "riscv64": 243}
_LDCONFIG_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S.*)$")


def resolve_target(target: str) -> str:
    """The absolute path of a target given as a path (containing ``/`` or existing) or a library name."""
    if not target:
        raise TargetError("empty target")
    if "/" in target or os.path.lexists(target):
        try:
            os.stat(target)
        except FileNotFoundError:
            raise TargetError(f"{target}: no such file") from None
        except PermissionError:
            raise TargetError(f"{target}: permission denied") from None
        except OSError as exc:
            raise TargetError(f"{target}: {exc.strerror or exc}") from None
        return os.path.abspath(target)
    return resolve_library(target)


def resolve_library(name: str) -> str:
    """The absolute path the dynamic loader would pick for library ``name`` (TargetError if none)."""
    if not name or "/" in name or "\0" in name:
        raise TargetError(f"{name!r}: not a library name")
    candidates = _candidate_names(name)
    for directory in _ld_library_path():
        found = _search_dir(directory, candidates)
        if found:
            return found
    cache = _ldconfig_cache()
    for cand in candidates:
        for path in _cache_matches(cache, cand):
            if _native_elf(path):
                return path
    multiarch = _MULTIARCH.get(os.uname().machine, "")
    for template in DEFAULT_DIRS:
        found = _search_dir(template.format(multiarch=multiarch), candidates)
        if found:
            return found
    raise TargetError(
        f"{name}: library not found (searched LD_LIBRARY_PATH, the ldconfig cache and the default directories)"
    )


def _candidate_names(name: str) -> List[str]:
    """File-name stems to look for, most specific first: ``c`` -> [``libc.so``]."""
    stems = []
    if ".so" in name:
        stems.append(name)
    base = name if name.startswith("lib") else "lib" + name
    if ".so" not in base:
        base += ".so"
    if base not in stems:
        stems.append(base)
    return stems


def _matches(filename: str, stem: str) -> Optional[Tuple]:
    """A sort key when ``filename`` is ``stem`` or ``stem.N...`` (shorter version suffix first)."""
    if filename == stem:
        return (0,)
    if filename.startswith(stem + "."):
        suffix = filename[len(stem) + 1:]
        parts = suffix.split(".")
        if all(p.isdigit() for p in parts):
            # Highest version wins among same-length suffixes; fewer components (the SONAME) first.
            return (len(parts), tuple(-int(p) for p in parts))
    return None


def _search_dir(directory: str, stems: List[str]) -> Optional[str]:
    try:
        entries = os.listdir(directory)
    except OSError:
        return None
    for stem in stems:
        hits = sorted((key, f) for f in entries if (key := _matches(f, stem)) is not None)
        for _key, filename in hits:
            path = os.path.join(directory, filename)
            if os.path.isfile(path) and _native_elf(path):
                return os.path.abspath(path)
    return None


def _ld_library_path() -> List[str]:
    value = os.environ.get("LD_LIBRARY_PATH", "")
    return [d for d in value.replace(";", ":").split(":") if d]


@lru_cache(maxsize=1)
def _ldconfig_cache() -> Tuple[Tuple[str, str, str], ...]:
    """``(name, flags, path)`` entries of ``ldconfig -p`` (empty when ldconfig is unavailable)."""
    import shutil  # with subprocess: only a library name needs them, and they cost a listing milliseconds
    import subprocess

    exe = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.access(p, os.X_OK)), None
    )
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, "-p"], capture_output=True, text=True, timeout=10, check=False, errors="replace"
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    entries = []
    for line in out.splitlines():
        m = _LDCONFIG_LINE.match(line)
        if m:
            entries.append((m[1], m[2], m[3].strip()))
    return tuple(entries)


def _cache_matches(cache, stem: str) -> List[str]:
    hits = sorted(
        (key, index, path)
        for index, (name, _flags, path) in enumerate(cache)
        if (key := _matches(name, stem)) is not None
    )
    return [os.path.abspath(path) for _k, _i, path in hits]


@lru_cache(maxsize=None)
def _native_machine() -> Optional[int]:
    """e_machine of this interpreter's own executable (what the loader would accept)."""
    try:
        with open(sys.executable, "rb") as f:
            head = f.read(20)
        if head[:4] == b"\x7fELF":
            return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    except OSError:
        pass
    return _MACHINE_OF_UNAME.get(os.uname().machine)


def _native_elf(path: str) -> bool:
    """True if ``path`` is an ELF object for this machine (32-bit cache entries are skipped)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return False
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return False
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    native = _native_machine()
    return native is None or machine == native
