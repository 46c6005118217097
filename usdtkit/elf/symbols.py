"""Function symbols of an ELF object, decoded in bulk.

An ELF file can carry two symbol tables: ``.dynsym``, the exported symbols the dynamic loader needs
(always kept), and ``.symtab``, every symbol including ``static`` functions (often stripped).  Each entry
(``Elf64_Sym``, 24 bytes; ``Elf32_Sym``, 16) holds a name offset into the linked string table, a type and
binding packed in ``st_info``, the index of the section defining it (``SHN_UNDEF`` = imported), the
link-time address and the size.  A function is ``STT_FUNC`` or ``STT_GNU_IFUNC`` (an indirect function
whose resolver picks an implementation at load time) with a defining section.

Exported symbols may be *versioned* (glibc's ``memcpy@@GLIBC_2.14``): ``.gnu.version`` holds one 16-bit
index per ``.dynsym`` entry, naming an entry of ``.gnu.version_d`` (definitions).  In ``.symtab`` the
version is sometimes spelled into the name; it is split off so both tables agree.  A function present
in both tables (same name and address) is listed once, with the ``.dynsym`` version.

When ``.symtab`` was stripped, local functions may still be found in MiniDebugInfo or a separate debug
file (see :mod:`.debuginfo`); their addresses are translated to file offsets through the *main* file's
segments, since debug files keep addresses but not the code.

Big tables (libjvm: 70,000 entries) are decoded with ``struct.iter_unpack`` over the section bytes, and
names are sliced out of the string table decoded once, which is ~20x faster than per-record parsing.
"""
from __future__ import annotations

import struct
import sys
from array import array
from itertools import accumulate, compress, repeat
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from ..errors import ElfError, ProbeNotFound
from .glob import NameFilter, compile_glob, demangled_matcher
from .image import (
    ET_REL,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_DYNSYM,
    SHT_GNU_VERDEF,
    SHT_GNU_VERNEED,
    SHT_GNU_VERSYM,
    SHT_NOBITS,
    SHT_SYMTAB,
    ElfImage,
    Section,
)

STT_FUNC = 2
STT_GNU_IFUNC = 10
_BINDINGS = ["LOCAL", "GLOBAL", "WEAK"] + [f"<{i}>" for i in range(3, 16)]
_BINDINGS[10] = "GNU_UNIQUE"

#: A function as a plain tuple, the fast internal form of :class:`~usdtkit.elf.model.FunctionSymbol`:
#: (name, address, size, file_offset, binding, version, source, ifunc).
Row = Tuple[str, int, int, int, str, Optional[str], str, bool]


# --------------------------------------------------------------------------- raw tables
def _string_table(image: ElfImage, sec: Section) -> bytes:
    if not 0 < sec.link < len(image.sections):
        raise ElfError(f"{image.display}: {sec.name}: string table index {sec.link} out of range")
    return image.section_data(image.sections[sec.link])


def _entries(image: ElfImage, sec: Section) -> Tuple[Iterable[tuple], int]:
    """Iterator over (st_name, st_info, st_shndx, st_value, st_size) of a symbol table, and its count.

    Record by record: used where only a few entries matter (see :func:`symbol_addresses`).
    """
    size = _entry_size(image, sec)
    data = image.section_data(sec)
    count = len(data) // size
    view = memoryview(data)[: count * size]
    e = image.endian
    if image.elfclass == 64:
        return ((n, i, x, v, s) for n, i, _o, x, v, s in struct.iter_unpack(f"{e}IBBHQQ", view)), count
    return ((n, i, x, v, s) for n, v, s, i, _o, x in struct.iter_unpack(f"{e}IIIBBH", view)), count


def _entry_size(image: ElfImage, sec: Section) -> int:
    size = 24 if image.elfclass == 64 else 16
    if sec.entsize not in (0, size):
        raise ElfError(f"{image.display}: {sec.name}: bad symbol entry size {sec.entsize}")
    return size


class _Columns(NamedTuple):
    """A symbol table split into columns: names (offsets), st_info bytes, shndx bytes, values, sizes."""

    st_names: Sequence[int]
    info: bytes
    shndx_lo: bytes
    shndx_hi: bytes
    values: Sequence[int]
    sizes: Sequence[int]


def _columns(image: ElfImage, sec: Section) -> _Columns:
    """Split a symbol table into columns with C-level slicing (no per-record Python work)."""
    size = _entry_size(image, sec)
    data = image.section_data(sec)
    count = len(data) // size
    data = data[: count * size]
    swap = image.little_endian != (sys.byteorder == "little")
    words = array("I")
    words.frombytes(data)
    if swap:
        words.byteswap()
    if size == 24:
        quads = array("Q")
        quads.frombytes(data)
        if swap:
            quads.byteswap()
        return _Columns(words[0::6], data[4::24], data[6::24], data[7::24], quads[1::3], quads[2::3])
    return _Columns(words[0::4], data[12::16], data[14::16], data[15::16], words[1::4], words[2::4])


class _Names:
    """Names out of a string table, by offset.

    The table is decoded once (latin-1 keeps byte offsets) and split at NULs into a dict offset->name;
    offsets pointing into the middle of a string (the linker shares suffixes) are sliced one by one.
    """

    def __init__(self, table: bytes) -> None:
        self.ascii = table.isascii()
        self.text = table.decode("latin-1")
        parts = self.text.split("\0")
        starts = accumulate(map((1).__add__, map(len, parts)), initial=0)
        self.by_offset = dict(zip(starts, parts))

    def get(self, offset: int) -> str:
        name = self.by_offset.get(offset)
        if name is None:
            text = self.text
            end = text.find("\0", offset)
            name = text[offset:end] if end >= 0 else text[offset:]
        return name if self.ascii else _utf8(name)

    def many(self, offsets: Iterable[int]) -> List[str]:
        names = list(map(self.by_offset.get, offsets))
        if None in names:
            text = self.text
            for i, name in enumerate(names):
                if name is None:
                    offset = offsets[i]  # type: ignore[index]
                    end = text.find("\0", offset)
                    names[i] = text[offset:end] if end >= 0 else text[offset:]
        if not self.ascii:
            names = [n if n.isascii() else _utf8(n) for n in names]
        return names


def _utf8(latin: str) -> str:
    return latin.encode("latin-1").decode("utf-8", "surrogateescape")


class _Offsets:
    """Translates link-time addresses to file offsets through a (main) image's PT_LOAD segments."""

    def __init__(self, image: ElfImage) -> None:
        self.image = image
        self.ranges = [(s.vaddr, s.vaddr + s.filesz, s.offset - s.vaddr) for s in image.loads if s.filesz]
        exec_ranges = [
            (s.vaddr, s.vaddr + s.filesz, s.offset - s.vaddr) for s in image.loads if s.flags & 1 and s.filesz
        ]
        self.hot = (exec_ranges or self.ranges or [(0, 0, 0)])[0]
        self.relocatable = image.type == ET_REL or not image.loads

    def one(self, value: int, shndx: int, own: ElfImage) -> Optional[int]:
        for lo, hi, delta in self.ranges:
            if lo <= value < hi:
                return value + delta
        if self.relocatable and own is self.image and 0 < shndx < len(own.sections):
            sec = own.sections[shndx]
            if sec.type != SHT_NOBITS:
                return sec.offset + value - (sec.addr if own.type != ET_REL else 0)
        return None


class FunctionTable:
    """Function symbols as parallel columns; :meth:`rows` gives :data:`Row` tuples.

    The columnar form lets a big table be filtered, merged and serialised with C-level iteration.
    ``versions`` is None when no entry has a version, ``ifuncs`` (true for an STT_GNU_IFUNC) when no
    entry is an indirect function.
    """

    __slots__ = ("names", "addresses", "sizes", "offsets", "bindings", "versions", "sources", "ifuncs")

    def __init__(self) -> None:
        self.names: List[str] = []
        self.addresses: List[int] = []
        self.sizes: List[int] = []
        self.offsets: List[int] = []
        self.bindings: List[str] = []
        self.versions: Optional[List[Optional[str]]] = None
        self.sources: List[str] = []
        self.ifuncs: Optional[List[bool]] = None

    def __len__(self) -> int:
        return len(self.names)

    def version_list(self) -> List[Optional[str]]:
        if self.versions is None:
            self.versions = [None] * len(self.names)
        return self.versions

    def select(self, keep: Sequence[object]) -> "FunctionTable":
        """The rows whose ``keep`` entry is true."""
        out = FunctionTable()
        out.names = list(compress(self.names, keep))
        out.addresses = list(compress(self.addresses, keep))
        out.sizes = list(compress(self.sizes, keep))
        out.offsets = list(compress(self.offsets, keep))
        out.bindings = list(compress(self.bindings, keep))
        out.versions = None if self.versions is None else list(compress(self.versions, keep))
        out.sources = list(compress(self.sources, keep))
        out.ifuncs = None if self.ifuncs is None else list(compress(self.ifuncs, keep))
        return out

    def append_row(self, row: Row) -> None:
        if row[5] is not None:
            self.version_list()
        if row[7] and self.ifuncs is None:
            self.ifuncs = [False] * len(self.names)
        self.names.append(row[0])
        self.addresses.append(row[1])
        self.sizes.append(row[2])
        self.offsets.append(row[3])
        self.bindings.append(row[4])
        if self.versions is not None:
            self.versions.append(row[5])
        self.sources.append(row[6])
        if self.ifuncs is not None:
            self.ifuncs.append(row[7])

    def row(self, i: int) -> Row:
        version = None if self.versions is None else self.versions[i]
        ifunc = False if self.ifuncs is None else self.ifuncs[i]
        return (self.names[i], self.addresses[i], self.sizes[i], self.offsets[i], self.bindings[i], version,
                self.sources[i], ifunc)

    def rows(self) -> List[Row]:
        versions = repeat(None) if self.versions is None else self.versions
        ifuncs = repeat(False) if self.ifuncs is None else self.ifuncs
        return list(zip(self.names, self.addresses, self.sizes, self.offsets, self.bindings, versions,
                        self.sources, ifuncs))


_FUNC_MASK = bytes(1 if (b & 0xF) in (STT_FUNC, STT_GNU_IFUNC) else 0 for b in range(256))
_IFUNC_MASK = bytes(1 if (b & 0xF) == STT_GNU_IFUNC else 0 for b in range(256))
_NONZERO = bytes([0] + [1] * 255)
_BIND_OF = bytes(b >> 4 for b in range(256))


_RANK_OF_BINDING = {"GLOBAL": 0, "WEAK": 1, "GNU_UNIQUE": 1}


def _split_versions(table: FunctionTable) -> Optional[List[bool]]:
    """Split versions spelled into ``.symtab`` names (``foo@@V2`` default, ``foo@V1`` hidden).

    One address often carries several of them, plus a local alias without version (glibc's
    ``memcpy``); keep one row per (name, address): default version, then any version, then global.
    Returns the rows to drop, or None.
    """
    names, addresses = table.names, table.addresses
    versioned = set()
    for i, name in enumerate(names):
        if "@" not in name:
            continue
        base, _, version = name.partition("@")
        names[i] = base
        hidden = not version.startswith("@")
        version = version.lstrip("@")
        if version:
            table.version_list()[i] = _Hidden(version) if hidden else version
        versioned.add((base, addresses[i]))
    if not versioned:
        return None
    versions = table.version_list()
    bindings = table.bindings
    wanted = {address for _name, address in versioned}
    groups: Dict[Tuple[str, int], List[int]] = {}
    for i in compress(range(len(names)), map(wanted.__contains__, addresses)):
        key = (names[i], addresses[i])
        if key in versioned:
            groups.setdefault(key, []).append(i)
    drop: Optional[List[bool]] = None

    def rank(i: int) -> tuple:
        v = versions[i]
        return (type(v) is _Hidden, v is None, _RANK_OF_BINDING.get(bindings[i], 2))

    for rows in groups.values():
        if len(rows) > 1:
            best = min(rows, key=rank)
            if drop is None:
                drop = [False] * len(names)
            for i in rows:
                drop[i] = i != best
    table.versions = [None if v is None else str(v) for v in versions]
    return drop


def _function_table(
    image: ElfImage,
    sec: Section,
    offsets: _Offsets,
    source: str,
    match: NameFilter,
    versions: Optional[List[Optional[str]]] = None,
) -> FunctionTable:
    """The defined functions (STT_FUNC/STT_GNU_IFUNC, st_shndx != SHN_UNDEF) of one symbol table."""
    cols = _columns(image, sec)
    count = len(cols.info)
    is_func = int.from_bytes(cols.info.translate(_FUNC_MASK), "little")
    defined = int.from_bytes(cols.shndx_lo.translate(_NONZERO), "little") | int.from_bytes(
        cols.shndx_hi.translate(_NONZERO), "little"
    )
    sel = (is_func & defined).to_bytes(count, "little")
    names = _Names(_string_table(image, sec))

    table = FunctionTable()
    st_names = list(compress(cols.st_names, sel))
    table.names = names.many(st_names)
    table.addresses = list(compress(cols.values, sel))
    table.sizes = list(compress(cols.sizes, sel))
    table.bindings = list(map(_BINDINGS.__getitem__, compress(cols.info.translate(_BIND_OF), sel)))
    table.sources = [source] * len(table.names)
    ifuncs = bytes(compress(cols.info.translate(_IFUNC_MASK), sel))
    if 1 in ifuncs:
        table.ifuncs = list(map(bool, ifuncs))
    if versions is not None and len(versions) >= count:
        picked = list(compress(versions, sel))
        if any(v is not None for v in picked):
            table.versions = picked
    drop: Optional[List[bool]] = None
    if "@" in names.text:
        drop = _split_versions(table)

    addrs = table.addresses
    lo0, hi0, delta0 = offsets.hot
    if not addrs or (lo0 <= min(addrs) and max(addrs) < hi0):
        # All in the executable segment, the common case; PIC objects often have offset == address.
        table.offsets = addrs.copy() if delta0 == 0 else list(map(delta0.__add__, addrs))
    else:
        shndx = list(compress((lo | hi << 8 for lo, hi in zip(cols.shndx_lo, cols.shndx_hi)), sel))
        table.offsets = [
            value + delta0 if lo0 <= value < hi0 else offsets.one(value, shndx[i], image)  # type: ignore[misc]
            for i, value in enumerate(addrs)
        ]
    keep: Optional[List[bool]] = None
    if None in table.offsets:  # not in any segment: cannot be probed
        keep = [off is not None for off in table.offsets]
    if drop is not None:
        keep = [not d for d in drop] if keep is None else [k and not d for k, d in zip(keep, drop)]
    if match is not None:
        matched = list(map(bool, map(match, table.names)))
        keep = matched if keep is None else [a and b for a, b in zip(keep, matched)]
    if keep is not None:
        table = table.select(keep)
    return table


# --------------------------------------------------------------------------- versions
class _Hidden(str):
    """A non-default version (``foo@V1`` rather than ``foo@@V2``), while deduplicating."""


def _version_names(image: ElfImage, dynsym: Section) -> Optional[List[Optional[str]]]:
    """Per ``.dynsym`` entry, the name of its GNU version (None: unversioned/local).

    Non-default versions (the versym entry's bit 15) are :class:`_Hidden` strings.
    """
    versym = next((s for s in image.sections if s.type == SHT_GNU_VERSYM), None)
    if versym is None:
        return None
    index_names: Dict[int, str] = {}
    for sec in image.sections:
        if sec.type == SHT_GNU_VERDEF:
            index_names.update(_verdef(image, sec))
        elif sec.type == SHT_GNU_VERNEED:
            for idx, name in _verneed(image, sec).items():
                index_names.setdefault(idx, name)
    data = image.section_data(versym)
    count = len(data) // 2
    out: List[Optional[str]] = []
    get = index_names.get
    hidden = {idx: _Hidden(name) for idx, name in index_names.items()}
    for (value,) in struct.iter_unpack(f"{image.endian}H", memoryview(data)[: count * 2]):
        idx = value & 0x7FFF
        if idx < 2:
            out.append(None)
        else:
            out.append(hidden.get(idx) if value & 0x8000 else get(idx))
    return out


def _verdef(image: ElfImage, sec: Section) -> Dict[int, str]:
    data = image.section_data(sec)
    strtab = _string_table(image, sec)
    names = _Names(strtab)
    out: Dict[int, str] = {}
    e = image.endian
    off = 0
    for _ in range(min(sec.info or len(data) // 20, len(data) // 20)):
        if off + 20 > len(data):
            break
        _ver, _flags, ndx, cnt, _hash, aux, nxt = struct.unpack_from(f"{e}HHHHIII", data, off)
        if cnt and off + aux + 8 <= len(data):
            (name_off,) = struct.unpack_from(f"{e}I", data, off + aux)
            if name_off < len(strtab):
                out[ndx & 0x7FFF] = names.get(name_off)
        if not nxt:
            break
        off += nxt
    return out


def _verneed(image: ElfImage, sec: Section) -> Dict[int, str]:
    data = image.section_data(sec)
    strtab = _string_table(image, sec)
    names = _Names(strtab)
    out: Dict[int, str] = {}
    e = image.endian
    off = 0
    budget = len(data) // 8  # every record is at least 16 bytes: more steps than this means a cycle
    for _ in range(min(sec.info or budget, budget)):
        if off + 16 > len(data) or budget <= 0:
            break
        _ver, cnt, _file, aux, nxt = struct.unpack_from(f"{e}HHIII", data, off)
        aoff = off + aux
        for _ in range(cnt):
            budget -= 1
            if aoff + 16 > len(data) or budget <= 0:
                break
            _hash, _flags, other, name_off, anext = struct.unpack_from(f"{e}IHHII", data, aoff)
            if name_off < len(strtab):
                out[other & 0x7FFF] = names.get(name_off)
            if not anext:
                break
            aoff += anext
        if not nxt:
            break
        off += nxt
    return out


# --------------------------------------------------------------------------- public entry points
def function_table(
    image: ElfImage,
    pattern: Optional[str] = None,
    *,
    debug_roots: Optional[Sequence[str]] = None,
    use_debug: bool = True,
    match: NameFilter = None,
) -> FunctionTable:
    """The function symbols of ``image`` matching ``pattern``, deduplicated.

    Order: ``.symtab`` (or, without it, MiniDebugInfo then a build-id debug file under ``debug_roots``),
    then the ``.dynsym`` functions not already listed.  A function in both tables (same name and
    address) is listed once, from ``.symtab``, with the ``.dynsym`` version.  ``match`` (a callable
    taking a name) may replace ``pattern``.
    """
    if match is None:
        match = compile_glob(pattern)
    offsets = _Offsets(image)
    symtab = next((s for s in image.sections if s.type == SHT_SYMTAB), None)
    dynsym = next((s for s in image.sections if s.type == SHT_DYNSYM), None)

    primary: List[FunctionTable] = []
    if symtab is not None:
        primary.append(_function_table(image, symtab, offsets, ".symtab", match))
    elif use_debug:
        from .debuginfo import debug_images

        debugs = debug_images(image, debug_roots)
        try:
            for debug, source in debugs:
                table = next((s for s in debug.sections if s.type == SHT_SYMTAB), None)
                if table is not None:
                    primary.append(_function_table(debug, table, offsets, source, match))
        finally:
            for debug, _source in debugs:
                debug.close()

    dyn = FunctionTable()
    dyn_index: Dict[Tuple[str, int], int] = {}
    if dynsym is not None:
        dyn = _function_table(image, dynsym, offsets, ".dynsym", match, _version_names(image, dynsym))
        versions = dyn.versions
        for i, key in enumerate(zip(dyn.names, dyn.addresses)):
            j = dyn_index.setdefault(key, i)
            # One address exported under several versions (foo@V1, foo@@V2): keep the default one.
            if j != i and versions is not None and type(versions[j]) is _Hidden and type(versions[i]) is str:
                dyn_index[key] = i
        if versions is not None:
            dyn.versions = [None if v is None else str(v) for v in versions]

    if not primary:
        if len(dyn_index) == len(dyn):
            return dyn
        return dyn.select([dyn_index[key] == i for i, key in enumerate(zip(dyn.names, dyn.addresses))])
    result = primary[0]
    if len(primary) > 1:
        result = FunctionTable()
        seen: Set[Tuple[str, int]] = set()
        for table in primary:
            for i, key in enumerate(zip(table.names, table.addresses)):
                if key not in seen:
                    seen.add(key)
                    result.append_row(table.row(i))
    if dyn_index:
        names, addresses = result.names, result.addresses
        dyn_versions = dyn.versions
        for i in compress(range(len(result)), map(set(dyn.addresses).__contains__, addresses)):
            j = dyn_index.pop((names[i], addresses[i]), None)
            if j is not None and dyn_versions is not None and dyn_versions[j] is not None:
                own = result.version_list()
                if own[i] is None:
                    own[i] = dyn_versions[j]
        for j in sorted(dyn_index.values()):
            result.append_row(dyn.row(j))
    return result


def function_rows(image: ElfImage, pattern: Optional[str] = None, **kwargs) -> List[Row]:
    """:func:`function_table` as a list of :data:`Row` tuples."""
    return function_table(image, pattern, **kwargs).rows()


def read_functions(
    path: str,
    pattern: Optional[str] = None,
    demangle: bool = False,
    *,
    binary: Optional[str] = None,
    debug_roots: Optional[Sequence[str]] = None,
) -> list:
    """Function symbols of the ELF file at ``path`` whose name matches the glob ``pattern``.

    With ``demangle``, C++ names get a ``demangled`` form and the pattern also matches it.
    ``binary`` is the path to report (default ``path``).
    """
    from .model import FunctionSymbol

    shown = binary or path
    with ElfImage(path, binary) as image:
        rows = function_rows(image, None if demangle else pattern, debug_roots=debug_roots)
    if not demangle:
        return [FunctionSymbol(r[0], r[1], r[2], r[3], r[4], shown, r[5], r[6], ifunc=r[7]) for r in rows]
    from .demangle import demangle_names

    table = demangle_names(r[0] for r in rows)
    match = demangled_matcher(pattern)
    out = []
    for r in rows:
        pretty = table.get(r[0])
        if not match(r[0], pretty):
            continue
        out.append(FunctionSymbol(r[0], r[1], r[2], r[3], r[4], shown, r[5], r[6], pretty, r[7]))
    return out


_BINDING_RANK = {"GLOBAL": 0, "WEAK": 1, "GNU_UNIQUE": 1}


def find_symbol(path: str, name: str, *, binary: Optional[str] = None):
    """The function called ``name`` (or ``name@version``) in ``path``; ProbeNotFound if there is none.

    When several functions share the name (``static`` functions of different files), a global one wins,
    then the first in table order.  Without a version, the default one (``memcpy@@GLIBC_2.14``, what
    programs link against today) wins over the older ones kept for old binaries (``memcpy@GLIBC_2.2.5``).
    """
    from .model import FunctionSymbol

    wanted, _, version = name.partition("@")
    version = version.lstrip("@") or None
    shown = binary or path
    with ElfImage(path, binary) as image:
        rows = function_rows(image, match=wanted.__eq__)
        found = [r for r in rows if version is None or r[5] == version]
        if not found:
            from .suggest import close_names, did_you_mean

            if rows:  # the name exists, under other versions
                choices = sorted({r[0] + (f"@{r[5]}" if r[5] else "") for r in rows})
            else:
                choices = close_names(wanted, function_table(image).names)
            raise ProbeNotFound(f"{shown}: no function named {name}{did_you_mean(choices)}")
        if version is None and len({r[5] for r in found}) > 1:
            hidden = _hidden_versions(image, wanted)
            found = [r for r in found if r[5] not in hidden] or found
    r = min(found, key=lambda row: _BINDING_RANK.get(row[4], 2))
    return FunctionSymbol(r[0], r[1], r[2], r[3], r[4], shown, r[5], r[6], ifunc=r[7])


def _hidden_versions(image: ElfImage, name: str) -> Set[str]:
    """The non-default versions ``.dynsym`` exports function ``name`` under (``foo@V1`` next to ``foo@@V2``)."""
    dynsym = next((s for s in image.sections if s.type == SHT_DYNSYM), None)
    if dynsym is None:
        return set()
    table = _function_table(image, dynsym, _Offsets(image), ".dynsym", name.__eq__, _version_names(image, dynsym))
    return {str(v) for v in table.versions or () if type(v) is _Hidden}


def address_to_offset(path: str, address: int, *, binary: Optional[str] = None) -> int:
    """The file offset of link-time ``address`` in ``path`` (ProbeNotFound outside every segment)."""
    with ElfImage(path, binary) as image:
        offset = image.vaddr_to_offset(address)
        if offset is None and (image.type == ET_REL or not image.loads):
            offset = image.section_vaddr_to_offset(address)
    if offset is None:
        raise ProbeNotFound(f"{binary or path}: address {address:#x} is not in any loadable segment")
    return offset


def symbol_addresses(image: ElfImage, names: Set[str], *, debug_files: bool = True) -> Dict[str, int]:
    """Link-time values of the defined symbols (any type) called ``names``, for rip-relative args.

    Only names whose value is unambiguous are returned: a single value, or a single global/weak
    definition among same-named locals.  The string tables are searched for the names first, so only
    the matching entries are decoded.  Without ``.symtab``, a debug file stands in for it unless
    ``debug_files`` is false (enough for exported names).
    """
    tables = [s for s in image.sections if s.type in (SHT_SYMTAB, SHT_DYNSYM)]
    images = [(image, t) for t in tables]
    if debug_files and not any(t.type == SHT_SYMTAB for t in tables):
        from .debuginfo import debug_images

        for debug, _source in debug_images(image, None, mini=False):
            images.extend((debug, t) for t in debug.sections if t.type == SHT_SYMTAB)
    found: Dict[str, Dict[int, int]] = {}
    try:
        for owner, table in images:
            strtab = _string_table(owner, table)
            wanted: Dict[int, str] = {}
            for name in names:
                needle = name.encode("utf-8", "surrogateescape") + b"\0"
                pos = strtab.find(needle)
                while pos >= 0:
                    wanted[pos] = name
                    pos = strtab.find(needle, pos + 1)
            if not wanted:
                continue
            entries, _count = _entries(owner, table)
            for st_name, info, shndx, value, _size in entries:
                if st_name in wanted and shndx != SHN_UNDEF and (shndx < SHN_LORESERVE or shndx == 0xFFF1):
                    values = found.setdefault(wanted[st_name], {})
                    bind = info >> 4
                    values[value] = min(values.get(value, 9), bind if bind in (1, 2) else 9)
    finally:
        for owner, _t in images:
            if owner is not image:
                owner.close()
    out: Dict[str, int] = {}
    for name, values in found.items():
        if len(values) == 1:
            out[name] = next(iter(values))
        else:
            exported = [v for v, rank in values.items() if rank < 9]
            if len(exported) == 1:
                out[name] = exported[0]
    return out
