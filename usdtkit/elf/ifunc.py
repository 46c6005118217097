"""Indirect functions (``STT_GNU_IFUNC``): which implementation a call to one really reaches.

glibc ships several versions of its string and memory functions, each tuned for a CPU family
(``__strlen_sse2``, ``__strlen_avx2``, ``__strlen_evex``...).  The exported ``strlen`` is an *indirect
function*: its symbol's address is a **resolver**, which the dynamic loader calls once, while relocating,
and whose return value (the implementation for this CPU) is what the program's GOT slot then holds.
Every call goes straight to that implementation, so a uprobe or uretprobe on ``strlen`` itself sees the
resolver run at start-up and nothing afterwards.

**Which implementation a process uses.**  Calls from inside the library go through GOT slots the loader
fills from ``R_*_IRELATIVE`` relocations, whose addend is the resolver's address; the loader applies
them at start-up, even with lazy binding.  The resolver decides from the CPU features (and
``GLIBC_TUNABLES``), fixed for the life of the process, so every caller in that process reaches the
same implementation: the slot's content in ``/proc/PID/mem``, less the object's load bias, is its
link-time address, which the symbol table names.  The implementations are local symbols: they are in
``.symtab`` or the separate debug file (Debian's ``libc6-dbg``), not in ``.dynsym``.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterator, Optional, Tuple

from ..errors import ElfError, UsdtkitError
from .image import ElfImage
from .process import process_objects
from .symbols import FunctionTable, function_table

SHT_RELA = 4
#: R_*_IRELATIVE per ELF machine (the RELA architectures usdtkit traces).
IRELATIVE = {62: 37, 183: 1032}


@dataclass(frozen=True)
class Ifunc:
    """An indirect function of one ELF file: its resolver and the implementations it may pick."""

    name: str
    resolver: int
    candidates: Tuple[str, ...]
    slots: Tuple[int, ...]  # link-time addresses of the GOT slots filled from this resolver


def _irelative_slots(image: ElfImage, resolver: int) -> Tuple[int, ...]:
    """``r_offset`` of every IRELATIVE relocation whose addend is ``resolver``."""
    kind = IRELATIVE.get(image.machine)
    if kind is None:
        return ()
    fmt = f"{image.endian}QQq" if image.elfclass == 64 else f"{image.endian}IIi"
    size = struct.calcsize(fmt)
    slots = []
    for sec in image.sections:
        if sec.type != SHT_RELA:
            continue
        data = image.section_data(sec)
        for r_offset, r_info, addend in struct.iter_unpack(fmt, data[: len(data) // size * size]):
            rtype = r_info & 0xFFFFFFFF if image.elfclass == 64 else r_info & 0xFF
            if rtype == kind and addend == resolver:
                slots.append(r_offset)
    return tuple(slots)


def _prefix(name: str) -> str:
    """How glibc names the implementations of ``name``: ``__strlen_*``, ``__memcpy_chk_*``."""
    return f"{name}_" if name.startswith("__") else f"__{name}_"


def _candidates(table: FunctionTable, name: str, resolver: int) -> Tuple[str, ...]:
    """The functions named like implementations of ``name`` (``__strlen_*``), without the resolver
    itself and without the implementations of another, longer-named IFUNC (``__memcpy_chk_*``)."""
    ifuncs = table.ifuncs or []
    prefix = _prefix(name)
    others = {_prefix(n) for n, flag in zip(table.names, ifuncs) if flag}
    others = {o for o in others if len(o) > len(prefix) and o.startswith(prefix)}
    found = set()
    for i, candidate in enumerate(table.names):
        if not candidate.startswith(prefix) or table.addresses[i] == resolver or (ifuncs and ifuncs[i]):
            continue
        if any(candidate.startswith(other) for other in others):
            continue
        found.add(candidate)
    return tuple(sorted(found))


def find_ifunc(image: ElfImage, table: FunctionTable, address: int, name: Optional[str] = None) -> Optional[Ifunc]:
    """The indirect function of ``image`` (``table``: its functions) whose resolver is at link-time
    ``address``, or None.  ``name``, when it is one of the resolver's aliases, names it."""
    if not table.ifuncs:
        return None
    names = [n for n, a, flag in zip(table.names, table.addresses, table.ifuncs) if flag and a == address]
    if not names:
        return None
    if name not in names:  # strlen rather than __GI_strlen
        name = min(names, key=lambda n: (n.startswith("_"), len(n), n))
    # Aliases share the implementations: index and strchr are both served by __strchr_*.
    candidates = sorted({c for alias in names for c in _candidates(table, alias, address)})
    return Ifunc(name, address, tuple(candidates), _irelative_slots(image, address))


def _read_word(pid: int, address: int, size: int, little: bool) -> Optional[int]:
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.pread(fd, size, address)
    except OSError:
        return None
    finally:
        os.close(fd)
    return int.from_bytes(data, "little" if little else "big") if len(data) == size else None


def implementation_in(pid: int, path: str, image: ElfImage, ifunc: Ifunc) -> Optional[int]:
    """The link-time address of the implementation process ``pid`` reaches through ``ifunc`` of the
    file at ``path``, or None when the process does not map that file or its slots cannot be read."""
    if not ifunc.slots:
        return None
    try:
        objects = process_objects(pid)
    except UsdtkitError:
        return None
    for obj in objects:
        if obj.load_bias is None or not _same_file(obj.open_path, path):
            continue
        for slot in ifunc.slots:
            value = _read_word(pid, slot + obj.load_bias, image.addr_size, image.little_endian)
            if value is None:
                continue
            target = value - obj.load_bias
            # A slot not yet relocated holds the resolver; anything else must be code of this object.
            if target != ifunc.resolver and any(s.flags & 1 and s.vaddr <= target < s.vaddr + s.filesz
                                                for s in image.loads):
                return target
    return None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _name_at(table: FunctionTable, address: int, name: str) -> Optional[str]:
    """The best name of the function at ``address``: ``__NAME_*`` first, then any non-IFUNC symbol."""
    ifuncs = table.ifuncs or [False] * len(table.names)
    names = [n for n, a, flag in zip(table.names, table.addresses, ifuncs) if a == address and not flag]
    if not names:
        return None
    return min(names, key=lambda n: (not n.startswith(_prefix(name)), n))


def _users(pid: Optional[int]) -> Iterator[Tuple[int, str]]:
    """Processes whose choice is worth reporting: the traced one, else usdtkit's own (same CPU)."""
    if pid is not None:
        yield pid, f"pid {pid} calls"
    yield os.getpid(), "on this CPU, usdtkit's own process calls"


_RESOLVERS: Dict[Tuple[int, int, int, int], FrozenSet[int]] = {}
_RESOLVERS_KEPT = 64


def _exported_resolvers(path: str) -> FrozenSet[int]:
    """Link-time addresses of the IFUNC resolvers ``path`` exports (in ``.dynsym``), read once per file
    (by device, inode, size and modification time): a pattern's hundreds of probes in one library are
    checked against one reading."""
    info = os.stat(path)
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    found = _RESOLVERS.get(key)
    if found is None:
        with ElfImage(path) as image:
            quick = function_table(image, use_debug=False)
        found = frozenset(a for a, flag in zip(quick.addresses, quick.ifuncs or ()) if flag)
        if len(_RESOLVERS) >= _RESOLVERS_KEPT:
            _RESOLVERS.clear()
        _RESOLVERS[key] = found
    return found


def ifunc_warning(path: str, address: int, pid: Optional[int] = None, name: Optional[str] = None) -> Optional[str]:
    """A one-line warning when link-time ``address`` of ``path`` is an indirect function's resolver
    (``name``: how the user called it): the implementations it may pick and, when it can be read, the
    one process ``pid`` (else usdtkit's own process) calls.  None for an ordinary function or an
    unreadable file."""
    try:
        # Exported IFUNCs are in .dynsym: a cheap first look spares ordinary functions the debug file.
        if address not in _exported_resolvers(path):
            return None
        with ElfImage(path) as image:
            table = function_table(image)
            ifunc = find_ifunc(image, table, address, name)
            if ifunc is None:
                return None
            used, who = None, ""
            for user, who in _users(pid):
                used = implementation_in(user, path, image, ifunc)
                if used is not None:
                    break
    except (ElfError, OSError):
        return None
    message = (f"{ifunc.name} is an indirect function (IFUNC): its symbol is the resolver that picks an "
               "implementation once, at load time, so this probe misses the calls")
    if ifunc.candidates:
        message += f"; its implementations: {', '.join(ifunc.candidates)}"
    else:
        message += "; its implementations are local symbols this file does not list (install its debug symbols)"
    if used is not None:
        named = _name_at(table, used, ifunc.name)
        message += f"; {who} {named} (probe that instead)" if named else f"; {who} the code at {used:#x}"
    return message
