"""USDT probes from the ``.note.stapsdt`` section (the systemtap SDT v3 convention).

Every ``DTRACE_PROBE``/``STAP_PROBE`` macro in a program assembles a ``nop`` at the probe's *call site*
and an ELF note describing it, in the non-allocated section ``.note.stapsdt``.  An ELF note is a header
of three 4-byte words (owner name size, descriptor size, type) followed by the owner name and the
descriptor, each padded to the note alignment (4).  A USDT note has owner ``"stapsdt"``, type 3, and a
descriptor made of three addresses (4 or 8 bytes, per the ELF class, in the file's byte order) and
three NUL-terminated strings::

    pc          link-time address of the call site
    base        link-time address of the .stapsdt.base section, as the assembler saw it
    semaphore   address of the probe's 2-byte "is enabled" counter, or 0
    provider\\0 name\\0 arguments\\0

**base.**  Prelinking (or any tool moving sections after the note was written) shifts code without
rewriting the note.  The assembler also emits a 1-byte allocated section ``.stapsdt.base`` and records
its address in each note, so a reader can measure the shift: when the file has ``.stapsdt.base`` and the
note's base is not 0, ``pc += sh_addr(.stapsdt.base) - base``, and the semaphore likewise when it is
not 0.

**semaphore.**  A probe declared with a semaphore is only evaluated when its counter is non-zero; a
tracer increments it (through the kernel's uprobe ``ref_ctr_offset``, a *file offset*) while attached.

A probe ``provider:name`` may have many call sites (inlined functions, several macro uses); each site has
its own argument spec because the compiler put the values in different places at each one.  So a
:class:`UsdtProbe` holds every :class:`UsdtLocation` in note order, each with its own parsed args.

Offsets of the call site and semaphore are computed through the PT_LOAD segments (see :mod:`.image`).
"""
from __future__ import annotations

import struct
from typing import Dict, List, Optional, Tuple

from ..errors import ElfError
from .argspec import parse_args, symbols_of, with_symbol_addresses
from .image import ET_REL, SHT_NOBITS, ElfImage, iter_notes
from .model import UsdtLocation, UsdtProbe

NT_STAPSDT = 3
STAPSDT_OWNER = b"stapsdt"
NOTE_SECTION = ".note.stapsdt"
BASE_SECTION = ".stapsdt.base"

def _decode_stapsdt(image: ElfImage, desc: bytes, at: int) -> Tuple[str, str, int, int, int, str]:
    asz = image.addr_size
    if len(desc) < 3 * asz + 2:
        raise ElfError(f"{image.display}: corrupt {NOTE_SECTION}: note #{at} descriptor too short ({len(desc)} bytes)")
    pc, base, sem = struct.unpack_from(f"{image.endian}{'QQQ' if asz == 8 else 'III'}", desc)
    strings = desc[3 * asz:]
    p_end = strings.find(b"\0")
    n_end = strings.find(b"\0", p_end + 1) if p_end >= 0 else -1
    if n_end < 0:
        raise ElfError(f"{image.display}: corrupt {NOTE_SECTION}: note #{at} has unterminated provider or name")
    a_end = strings.find(b"\0", n_end + 1)
    if a_end < 0:
        if n_end + 1 != len(strings):
            raise ElfError(f"{image.display}: corrupt {NOTE_SECTION}: note #{at} has an unterminated argument string")
        a_end = n_end + 1
    dec = "utf-8"
    return (
        strings[:p_end].decode(dec, "surrogateescape"),
        strings[p_end + 1:n_end].decode(dec, "surrogateescape"),
        pc,
        base,
        sem,
        strings[n_end + 1:a_end].decode(dec, "surrogateescape"),
    )


def read_raw_notes(image: ElfImage) -> List[Tuple[str, str, int, int, int, str]]:
    """Every stapsdt note of ``image`` as ``(provider, name, pc, base, semaphore, arguments)``, raw."""
    notes = []
    for sec in image.sections:
        if sec.name != NOTE_SECTION or sec.type == SHT_NOBITS:
            continue
        data = image.section_data(sec)
        for owner, ntype, desc in iter_notes(image, data, sec.addralign, NOTE_SECTION):
            if owner == STAPSDT_OWNER and ntype == NT_STAPSDT:
                notes.append(_decode_stapsdt(image, desc, len(notes)))
    return notes


def _offset(image: ElfImage, vaddr: int, memsz: bool) -> Optional[int]:
    off = image.vaddr_to_offset(vaddr, memsz=memsz)
    if off is None and (image.type == ET_REL or not image.loads):
        off = image.section_vaddr_to_offset(vaddr)
    return off


def probes_from_image(image: ElfImage, binary: Optional[str] = None) -> List[UsdtProbe]:
    """Group the stapsdt notes of ``image`` into probes (first-seen order, call sites in note order)."""
    raw = read_raw_notes(image)
    if not raw:
        return []
    binary = binary or image.display
    base_sec = image.section(BASE_SECTION)
    arch = image.arch

    parsed: Dict[str, tuple] = {}
    for note in raw:
        if note[5] not in parsed:
            parsed[note[5]] = parse_args(note[5], arch)
    wanted = set()
    for args in parsed.values():
        wanted |= symbols_of(args)
    if wanted:
        from .symbols import symbol_addresses

        addresses = symbol_addresses(image, wanted)
        if addresses:
            parsed = {text: with_symbol_addresses(args, addresses) for text, args in parsed.items()}

    groups: Dict[Tuple[str, str], List[UsdtLocation]] = {}
    for provider, name, address, base, semaphore, arguments in raw:
        shift = base_sec.addr - base if (base_sec is not None and base != 0) else 0
        pc = address + shift
        sem_addr = semaphore + shift if semaphore else 0
        file_offset = _offset(image, pc, memsz=False)
        if file_offset is None:
            raise ElfError(
                f"{image.display}: probe {provider}:{name} at {pc:#x} lies outside every loadable segment"
            )
        sem_offset = None
        if semaphore:
            sem_offset = _offset(image, sem_addr, memsz=True)
            if sem_offset is None:
                raise ElfError(
                    f"{image.display}: semaphore of probe {provider}:{name} at {sem_addr:#x}"
                    " lies outside every loadable segment"
                )
        loc = UsdtLocation(
            address=address,
            base=base,
            semaphore=semaphore,
            arguments=arguments,
            args=parsed[arguments],
            pc=pc,
            file_offset=file_offset,
            semaphore_address=sem_addr,
            semaphore_offset=sem_offset,
        )
        groups.setdefault((provider, name), []).append(loc)
    return [UsdtProbe(p, n, binary, tuple(locs)) for (p, n), locs in groups.items()]


def read_usdt_probes(path: str, binary: Optional[str] = None) -> List[UsdtProbe]:
    """Every USDT probe of the ELF file at ``path`` (``binary``: the name to report, default ``path``)."""
    with ElfImage(path, binary) as image:
        return probes_from_image(image, binary or path)
