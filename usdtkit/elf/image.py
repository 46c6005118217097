"""A strict, minimal reader of ELF headers: the file header, section headers and program headers.

An ELF file starts with a fixed header saying its *class* (32 or 64-bit fields), its byte order, its
machine and where two tables live: the **section header table** (the linker's view: named pieces such
as ``.text``, ``.symtab``, ``.note.stapsdt``) and the **program header table** (the loader's view:
``PT_LOAD`` segments, each mapping a file range ``[p_offset, p_offset + p_filesz)`` at the virtual
address ``p_vaddr``).  Everything usdtkit discovers is found through these two tables, and every
"file offset" it reports (what the kernel's uprobe interface takes) is a virtual address translated
through the ``PT_LOAD`` segment containing it: ``offset = vaddr - p_vaddr + p_offset``.

The headers are decoded by pyelftools, through a bounded stream over ``pread``; every count, size
and offset is checked against the file size before a table is walked, so a corrupt or hostile file
costs bounded time and memory and fails with :class:`~usdtkit.errors.ElfError` naming the file.  The
big tables behind the headers (symbols, notes) are decoded in bulk with :mod:`struct` by the modules
that read them: pyelftools' record-by-record parsing takes over a second for libjvm's 58,000
symbols.  Section contents are read on demand with ``pread``, never ``mmap``: a file shrinking under
a mapping would kill the process with SIGBUS.
"""
from __future__ import annotations

import os
import stat
import struct
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

from ..errors import ElfError

ELF_MAGIC = b"\x7fELF"

# Section types and flags used by the rest of the package.
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_NOTE = 7
SHT_NOBITS = 8
SHT_DYNSYM = 11
SHT_GNU_VERDEF = 0x6FFFFFFD
SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_GNU_VERSYM = 0x6FFFFFFF
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_COMPRESSED = 0x800

PT_LOAD = 1
PT_NOTE = 4

ET_REL = 1
ET_EXEC = 2
ET_DYN = 3

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00

#: e_machine values and the architecture names usdtkit uses for them.
MACHINES: Dict[int, str] = {
    3: "i386",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390x",
    40: "arm",
    62: "x86_64",
    183: "aarch64",
    243: "riscv",
    258: "loongarch",
}

#: Largest decompressed section we accept (bounded memory on hostile input).
MAX_DECOMPRESSED = 256 << 20


class Section(NamedTuple):
    """One section header (``Elf{32,64}_Shdr``) plus its index and resolved name."""

    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


class Segment(NamedTuple):
    """One program header (``Elf{32,64}_Phdr``)."""

    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    align: int


class ElfImage:
    """The headers of one ELF file, and on-demand access to its bytes.

    Use as a context manager (the file descriptor stays open until :meth:`close`).  ``display`` is the
    name used in error messages (the path the user gave, or the path a process sees).
    """

    def __init__(self, path: str, display: Optional[str] = None, *, data: Optional[bytes] = None):
        self.path = path
        self.display = display or path
        self._fd: Optional[int] = None
        self._data = data
        if data is None:
            self._open()
        else:
            self.size = len(data)
        try:
            self._parse_headers()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_bytes(cls, data: bytes, display: str) -> "ElfImage":
        """An image of an ELF file held in memory (a decompressed MiniDebugInfo, a test fixture)."""
        return cls(display, display, data=data)

    # ------------------------------------------------------------------ file access
    def _open(self) -> None:
        # O_NONBLOCK: opening a FIFO must not hang; we refuse anything but a regular file below.
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise ElfError(f"{self.display}: {_os_reason(exc)}") from None
        try:
            st = os.fstat(fd)
        except OSError as exc:  # pragma: no cover - fstat on an open fd does not fail in practice
            os.close(fd)
            raise ElfError(f"{self.display}: {_os_reason(exc)}") from None
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            raise ElfError(f"{self.display}: is a directory")
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ElfError(f"{self.display}: not a regular file")
        self._fd = fd
        self.size = st.st_size

    def status(self) -> Optional[os.stat_result]:
        """The status of the open file (what is read, whatever the path names now); None in memory."""
        return None if self._fd is None else os.fstat(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ElfImage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, offset: int, size: int, what: str) -> bytes:
        """``size`` bytes at ``offset``; ElfError if that range is not entirely inside the file."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ElfError(
                f"{self.display}: {what} (offset {offset:#x}, size {size:#x}) lies outside the file"
                f" ({self.size} bytes; truncated or corrupt)"
            )
        if self._data is not None:
            return self._data[offset:offset + size]
        if self._fd is None:
            raise ElfError(f"{self.display}: file is closed")
        try:
            chunks = []
            done = 0
            while done < size:
                chunk = os.pread(self._fd, size - done, offset + done)
                if not chunk:
                    raise ElfError(f"{self.display}: file shrank while reading {what} (truncated)")
                chunks.append(chunk)
                done += len(chunk)
        except OSError as exc:
            raise ElfError(f"{self.display}: reading {what}: {_os_reason(exc)}") from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # ------------------------------------------------------------------ headers
    def _parse_headers(self) -> None:
        ident = self.read(0, min(16, self.size), "ELF identification")
        if ident[:4] != ELF_MAGIC:
            raise ElfError(f"{self.display}: not an ELF file")
        if len(ident) < 16:
            raise ElfError(f"{self.display}: truncated ELF header ({self.size} bytes)")
        if ident[4] not in (1, 2):
            raise ElfError(f"{self.display}: unknown ELF class {ident[4]}")
        if ident[5] not in (1, 2):
            raise ElfError(f"{self.display}: unknown ELF byte order {ident[5]}")
        self.elfclass = 64 if ident[4] == 2 else 32
        self.little_endian = ident[5] == 1
        self.endian = "<" if self.little_endian else ">"
        self.addr_size = 8 if self.elfclass == 64 else 4
        try:
            self._read_tables()
        except ElfError:
            raise
        except Exception as exc:  # pyelftools' ELFError/ELFParseError, construct and struct errors
            raise ElfError(f"{self.display}: corrupt ELF headers ({type(exc).__name__}: {exc})") from None

    def _read_tables(self) -> None:
        """Read the file header, section headers and program headers through pyelftools.

        pyelftools decodes the headers (a few dozen records); the large tables behind them (symbols,
        notes) are decoded in bulk by the modules that need them.  Every count and range is checked
        against the file size first, so hostile headers cost bounded time and memory."""
        from elftools.common.utils import struct_parse
        from elftools.elf.elffile import ELFFile

        elf = ELFFile(_BoundedStream(self))
        header = elf.header
        self.type = _number(header["e_type"], _E_TYPE)
        self.machine = _number(header["e_machine"], _E_MACHINE)
        self.entry, self.flags = header["e_entry"], header["e_flags"]
        self.arch = MACHINES.get(self.machine, f"machine-{self.machine}")
        shoff, shentsize = header["e_shoff"], header["e_shentsize"]
        phoff, phentsize = header["e_phoff"], header["e_phentsize"]
        shnum = elf.num_sections() if shoff else 0
        phnum = elf.num_segments() if phoff else 0
        for what, offset, count, size, minimum in (
                ("section header table", shoff, shnum, shentsize, elf.structs.Elf_Shdr.sizeof()),
                ("program header table", phoff, phnum, phentsize, elf.structs.Elf_Phdr.sizeof())):
            if count and size < minimum:
                raise ElfError(f"{self.display}: bad {what} entry size {size} (at least {minimum})")
            if count and (size <= 0 or count * size > self.size - offset):
                raise ElfError(f"{self.display}: {what} ({count} entries at {offset:#x}) lies outside the file"
                               " (truncated or corrupt)")
        # Headers are decoded with pyelftools' own structures (struct_parse), without building its
        # segment and section objects: those look further (a PT_DYNAMIC segment walks every section).
        segments: List[Segment] = []
        for i in range(phnum):
            h = struct_parse(elf.structs.Elf_Phdr, elf.stream, stream_pos=phoff + i * phentsize)
            segments.append(Segment(_number(h["p_type"], _P_TYPE), h["p_flags"], h["p_offset"], h["p_vaddr"],
                                    h["p_filesz"], h["p_memsz"], h["p_align"]))
        self.segments = segments
        self.loads = sorted((s for s in segments if s.type == PT_LOAD), key=lambda s: s.vaddr)
        self._elf, self._shnum = elf, shnum
        self._sections: Optional[List[Section]] = None

    @property
    def sections(self) -> List[Section]:
        """The section headers, decoded on first use (the load bias of a mapped object needs only the
        program headers, and a process maps many objects)."""
        if self._sections is None:
            try:
                self._sections = self._read_sections()
            except ElfError:
                raise
            except Exception as exc:  # pyelftools' parse errors, as in _parse_headers
                raise ElfError(f"{self.display}: corrupt section headers ({type(exc).__name__}: {exc})") from None
        return self._sections

    def _read_sections(self) -> List[Section]:
        from elftools.common.utils import struct_parse

        elf = self._elf
        shoff, shentsize = elf.header["e_shoff"], elf.header["e_shentsize"]
        headers = [struct_parse(elf.structs.Elf_Shdr, elf.stream, stream_pos=shoff + i * shentsize)
                   for i in range(self._shnum)]
        names = [""] * len(headers)
        index = elf.get_shstrndx() if headers else SHN_UNDEF
        if headers and index != SHN_UNDEF:
            if index >= len(headers):
                raise ElfError(f"{self.display}: section name table index {index} out of range")
            strtab = headers[index]
            if _number(strtab["sh_type"], _SH_TYPE) != SHT_NOBITS:
                table = self.read(strtab["sh_offset"], strtab["sh_size"], "section name table")
                names = [_cstring(table, h["sh_name"]) for h in headers]
        return [Section(i, names[i], _number(h["sh_type"], _SH_TYPE), h["sh_flags"], h["sh_addr"], h["sh_offset"],
                        h["sh_size"], h["sh_link"], h["sh_info"], h["sh_addralign"], h["sh_entsize"])
                for i, h in enumerate(headers)]

    # ------------------------------------------------------------------ queries
    def section(self, name: str) -> Optional[Section]:
        """The first section called ``name``, or None."""
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None

    def sections_of_type(self, sh_type: int) -> List[Section]:
        return [s for s in self.sections if s.type == sh_type]

    def section_data(self, sec: Section) -> bytes:
        """The contents of ``sec`` (empty for SHT_NOBITS), decompressed if SHF_COMPRESSED."""
        if sec.type == SHT_NOBITS or sec.size == 0:
            return b""
        data = self.read(sec.offset, sec.size, f"section {sec.name or sec.index}")
        if sec.flags & SHF_COMPRESSED:
            data = self._decompress(sec, data)
        return data

    def _decompress(self, sec: Section, data: bytes) -> bytes:
        fmt = f"{self.endian}IIQQ" if self.elfclass == 64 else f"{self.endian}III"
        hdr = struct.calcsize(fmt)
        if len(data) < hdr:
            raise ElfError(f"{self.display}: section {sec.name}: truncated compression header")
        ch_type, _reserved_or_size, *rest = struct.unpack_from(fmt, data)
        size = rest[0] if self.elfclass == 64 else _reserved_or_size
        if ch_type != 1:
            raise ElfError(f"{self.display}: section {sec.name}: unsupported compression type {ch_type}")
        if size > MAX_DECOMPRESSED:
            raise ElfError(f"{self.display}: section {sec.name}: absurd decompressed size {size}")
        import zlib

        try:
            obj = zlib.decompressobj()
            out = obj.decompress(data[hdr:], size)
        except zlib.error as exc:
            raise ElfError(f"{self.display}: section {sec.name}: corrupt compressed data ({exc})") from None
        if len(out) != size:
            raise ElfError(f"{self.display}: section {sec.name}: decompressed size mismatch")
        return out

    def vaddr_to_offset(self, vaddr: int, *, memsz: bool = False) -> Optional[int]:
        """The file offset of virtual address ``vaddr`` through the PT_LOAD segment containing it.

        With ``memsz`` the segment's whole memory image counts (for semaphores, which live in data);
        otherwise only its file-backed part.  None when no segment contains the address.
        """
        for seg in self.loads:
            end = seg.vaddr + (max(seg.memsz, seg.filesz) if memsz else seg.filesz)
            if seg.vaddr <= vaddr < end:
                return vaddr - seg.vaddr + seg.offset
        return None

    def section_vaddr_to_offset(self, vaddr: int) -> Optional[int]:
        """Fallback translation through allocated sections (relocatable objects have no segments)."""
        for sec in self.sections:
            if sec.flags & SHF_ALLOC and sec.type != SHT_NOBITS and sec.addr <= vaddr < sec.addr + sec.size:
                return vaddr - sec.addr + sec.offset
        return None

    def build_id(self) -> Optional[str]:
        """The GNU build-id (hex) from ``.note.gnu.build-id`` or any PT_NOTE segment, or None."""
        candidates = []
        sec = self.section(".note.gnu.build-id")
        if sec is not None and sec.type == SHT_NOTE:
            candidates.append((self.section_data(sec), sec.addralign, sec.name))
        if not candidates:
            for seg in self.segments:
                if seg.type == PT_NOTE and seg.filesz:
                    candidates.append((self.read(seg.offset, seg.filesz, "PT_NOTE segment"), seg.align, "PT_NOTE"))
        for data, align, what in candidates:
            for owner, ntype, desc in iter_notes(self, data, align, what):
                if owner == b"GNU" and ntype == 3 and desc:
                    return desc.hex()
        return None


_NHDR = {"<": struct.Struct("<III"), ">": struct.Struct(">III")}


def iter_notes(image: ElfImage, data: bytes, align: int, what: str) -> Iterator[Tuple[bytes, int, bytes]]:
    """Yield ``(owner, type, descriptor)`` for each note in ``data``, validating every size.

    A note is a header of three 4-byte words (owner name size, descriptor size, type) followed by the
    owner name and the descriptor, each padded to the note alignment.  Build-ids and USDT probes both
    come as notes, so the framing lives here, below the modules that read either.

    ``align`` is the note alignment (8 only for 8-aligned note sections, else 4).  A note whose sizes
    overrun ``data`` raises ElfError; a trailing fragment shorter than a note header is ignored.
    """
    align = 8 if align == 8 else 4
    mask = align - 1
    hdr = _NHDR[image.endian]
    end = len(data)
    off = 0
    while off + 12 <= end:
        namesz, descsz, ntype = hdr.unpack_from(data, off)
        name_off = off + 12
        desc_off = (name_off + namesz + mask) & ~mask
        desc_end = desc_off + descsz
        if desc_end > end or name_off + namesz > end:
            raise ElfError(
                f"{image.display}: corrupt {what}: note at offset {off:#x} has sizes"
                f" (name {namesz}, descriptor {descsz}) beyond the section's {end} bytes"
            )
        owner = data[name_off:name_off + namesz]
        if owner.endswith(b"\0"):
            owner = owner[:-1]
        yield owner, ntype, data[desc_off:desc_end]
        off = (desc_end + mask) & ~mask


class _BoundedStream:
    """A read-only file object over an :class:`ElfImage`, for pyelftools (reads past the end come back
    short, which pyelftools reports as a parse error)."""

    def __init__(self, image: "ElfImage") -> None:
        self._image = image
        self._pos = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._image.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._image.size if size is None or size < 0 else min(self._image.size, self._pos + size)
        if end <= self._pos:
            return b""
        data = self._image.read(self._pos, end - self._pos, "ELF headers")
        self._pos = end
        return data


def _enum_values(*names: str) -> Dict[str, int]:
    """Name-to-number tables of pyelftools' enums (it reports known values by name)."""
    from elftools.elf import enums

    table: Dict[str, int] = {}
    for name in dir(enums):
        if any(name.startswith(prefix) for prefix in names) and isinstance(getattr(enums, name), dict):
            table.update({k: v for k, v in getattr(enums, name).items() if isinstance(v, int)})
    return table


class _LazyEnum(dict):
    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self._prefixes = prefixes

    def __missing__(self, key: str) -> int:
        if not self._prefixes:
            raise KeyError(key)
        self.update(_enum_values(*self._prefixes))
        self._prefixes = ()
        return self[key]


_E_TYPE = _LazyEnum("ENUM_E_TYPE")
_E_MACHINE = _LazyEnum("ENUM_E_MACHINE")
_SH_TYPE = _LazyEnum("ENUM_SH_TYPE")
_P_TYPE = _LazyEnum("ENUM_P_TYPE")


def _number(value: object, table: Dict[str, int]) -> int:
    """pyelftools gives known enum values as names and unknown ones as numbers: always a number."""
    return value if isinstance(value, int) else table[value]


def _cstring(table: bytes, offset: int) -> str:
    """The NUL-terminated string at ``offset`` of a string table ("" when out of range)."""
    if offset >= len(table):
        return ""
    end = table.find(b"\0", offset)
    if end < 0:
        end = len(table)
    return table[offset:end].decode("utf-8", "surrogateescape")


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    return exc.strerror or str(exc)
