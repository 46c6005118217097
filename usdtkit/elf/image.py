"""A strict, minimal reader of ELF headers: the file header, section headers and program headers.

An ELF file starts with a fixed header saying its *class* (32 or 64-bit fields), its byte order, its
machine and where two tables live: the **section header table** (the linker's view: named pieces such
as ``.text``, ``.symtab``, ``.note.stapsdt``) and the **program header table** (the loader's view:
``PT_LOAD`` segments, each mapping a file range ``[p_offset, p_offset + p_filesz)`` at the virtual
address ``p_vaddr``).  Everything usdtkit discovers is found through these two tables, and every
"file offset" it reports (what the kernel's uprobe interface takes) is a virtual address translated
through the ``PT_LOAD`` segment containing it: ``offset = vaddr - p_vaddr + p_offset``.

The headers are fixed-layout records, decoded with :mod:`struct` (one layout per class and byte
order) from bytes read with ``pread``; every count, size and offset is checked against the file size
before a table is walked, so a corrupt or hostile file costs bounded time and memory and fails with
:class:`~usdtkit.errors.ElfError` naming the file.  Counts too big for the file header (over 65,279
sections, 65,535 program headers) are kept in section 0, as the ELF spec says.  The big tables
behind the headers (symbols, notes) are decoded in bulk by the modules that read them: a
record-by-record parser such as pyelftools takes over a second for libjvm's 58,000
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
        self._read_tables()

    def _read_tables(self) -> None:
        """Read the file header and program headers (the section headers wait for first use).

        Every count and range is checked against the file size first, so hostile headers cost
        bounded time and memory."""
        formats = _FORMATS[self.elfclass][self.endian]
        ehdr, phdr, shdr = formats
        if self.size < ehdr.size:
            raise ElfError(f"{self.display}: truncated ELF header ({self.size} bytes)")
        (_ident, self.type, self.machine, _version, self.entry, phoff, shoff, self.flags, _ehsize, phentsize,
         phnum, shentsize, shnum, shstrndx) = ehdr.unpack(self.read(0, ehdr.size, "ELF header"))
        self.arch = MACHINES.get(self.machine, f"machine-{self.machine}")
        first: Optional[tuple] = None  # section 0 holds the real counts when they overflow the header
        if shoff and (shnum == 0 or phnum == _PN_XNUM or shstrndx == _SHN_XINDEX):
            if shentsize < shdr.size:
                raise ElfError(f"{self.display}: bad section header table entry size {shentsize}"
                               f" (at least {shdr.size})")
            first = shdr.unpack(self.read(shoff, shdr.size, "section header 0"))
        if not shoff:
            shnum = 0
        elif shnum == 0 and first is not None:
            shnum = first[5]
        if phnum == _PN_XNUM:
            if first is None:
                raise ElfError(f"{self.display}: {_PN_XNUM} program headers but no section 0 to count them")
            phnum = first[7]
        if not phoff:
            phnum = 0
        if shstrndx == _SHN_XINDEX and first is not None:
            shstrndx = first[6]
        for what, offset, count, size, minimum in (
                ("section header table", shoff, shnum, shentsize, shdr.size),
                ("program header table", phoff, phnum, phentsize, phdr.size)):
            if count and size < minimum:
                raise ElfError(f"{self.display}: bad {what} entry size {size} (at least {minimum})")
            if count and (size <= 0 or count * size > self.size - offset):
                raise ElfError(f"{self.display}: {what} ({count} entries at {offset:#x}) lies outside the file"
                               " (truncated or corrupt)")
        table = self.read(phoff, phnum * phentsize, "program header table") if phnum else b""
        unpack = phdr.unpack_from
        fields = [unpack(table, i * phentsize) for i in range(phnum)]
        if self.elfclass == 64:  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
            segments = [Segment(f[0], f[1], f[2], f[3], f[5], f[6], f[7]) for f in fields]
        else:  # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align
            segments = [Segment(f[0], f[6], f[1], f[2], f[4], f[5], f[7]) for f in fields]
        self.segments = segments
        self.loads = sorted((s for s in segments if s.type == PT_LOAD), key=lambda s: s.vaddr)
        self._shdr, self._shoff, self._shentsize, self._shnum, self._shstrndx = shdr, shoff, shentsize, shnum, shstrndx
        self._sections: Optional[List[Section]] = None

    @property
    def sections(self) -> List[Section]:
        """The section headers, decoded on first use (the load bias of a mapped object needs only the
        program headers, and a process maps many objects)."""
        if self._sections is None:
            self._sections = self._read_sections()
        return self._sections

    def _read_sections(self) -> List[Section]:
        size, count = self._shentsize, self._shnum
        table = self.read(self._shoff, count * size, "section header table") if count else b""
        unpack = self._shdr.unpack_from
        headers = [unpack(table, i * size) for i in range(count)]
        names = [""] * count
        index = self._shstrndx if headers else SHN_UNDEF
        if headers and index != SHN_UNDEF:
            if index >= count:
                raise ElfError(f"{self.display}: section name table index {index} out of range")
            # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize
            strtab = headers[index]
            if strtab[1] != SHT_NOBITS:
                names_data = self.read(strtab[4], strtab[5], "section name table")
                names = [_cstring(names_data, h[0]) for h in headers]
        return [Section(i, names[i], *h[1:]) for i, h in enumerate(headers)]

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


_PN_XNUM = 0xFFFF  # e_phnum: the count is in section 0's sh_info
_SHN_XINDEX = 0xFFFF  # e_shstrndx: the index is in section 0's sh_link


def _formats(cls: int, endian: str) -> Tuple[struct.Struct, struct.Struct, struct.Struct]:
    """``Elf{32,64}_Ehdr``, ``_Phdr`` and ``_Shdr`` layouts (the 32-bit program header orders its fields
    differently)."""
    if cls == 64:
        return (struct.Struct(endian + "16sHHIQQQIHHHHHH"), struct.Struct(endian + "IIQQQQQQ"),
                struct.Struct(endian + "IIQQQQIIQQ"))
    return (struct.Struct(endian + "16sHHIIIIIHHHHHH"), struct.Struct(endian + "IIIIIIII"),
            struct.Struct(endian + "IIIIIIIIII"))


_FORMATS = {cls: {e: _formats(cls, e) for e in "<>"} for cls in (32, 64)}


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
