"""Predict the per-hit cost of a uprobe site from its first instruction (x86_64).

The kernel replaces the probed instruction with ``int3``.  On a hit it must then run the original
instruction: a few (NOPs, ``push``, ``jmp``, ``call``) are emulated, the rest are single-stepped out of
line in a per-task slot.  An instruction that addresses memory relative to ``%rip`` needs its
displacement fixed up for the slot's address and was measured here at about 15.6 µs per hit, 35 times
a NOP site.  USDT sites are NOPs (1 or 5 bytes), so this matters for uprobes placed inside functions.

Only enough of the x86 encoding is decoded to find the ModRM byte: legacy and REX prefixes, VEX, the
one-, two- and three-byte opcode maps.
"""
from __future__ import annotations

from typing import Optional

_PREFIXES = {0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0xF0}
_ONE_BYTE_MODRM = (
    set(range(0x00, 0x04)) | set(range(0x08, 0x0C)) | set(range(0x10, 0x14)) | set(range(0x18, 0x1C))
    | set(range(0x20, 0x24)) | set(range(0x28, 0x2C)) | set(range(0x30, 0x34)) | set(range(0x38, 0x3C))
    | {0x62, 0x63, 0x69, 0x6B} | set(range(0x80, 0x90)) | {0xC0, 0xC1, 0xC6, 0xC7}
    | set(range(0xD0, 0xD4)) | set(range(0xD8, 0xE0)) | {0xF6, 0xF7, 0xFE, 0xFF}
)
_TWO_BYTE_NO_MODRM = (
    {0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0E, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x37, 0x77, 0xA0, 0xA1,
     0xA2, 0xA8, 0xA9, 0xAA} | set(range(0x80, 0x90)) | set(range(0xC8, 0xD0))
)
NOP5 = bytes.fromhex("0f1f440000")


def _modrm_is_rip_relative(modrm: int) -> bool:
    return (modrm >> 6) == 0 and (modrm & 7) == 5


def is_rip_relative(code: bytes) -> Optional[bool]:
    """Whether the first instruction of ``code`` addresses memory through ``%rip`` (None: unknown)."""
    i = 0
    while i < len(code) and code[i] in _PREFIXES:
        i += 1
    if i < len(code) and code[i] in (0xC4, 0xC5):  # VEX: ModRM follows the opcode byte
        length = 3 if code[i] == 0xC4 else 2
        at = i + length + 1
        return _modrm_is_rip_relative(code[at]) if at < len(code) else None
    if i < len(code) and 0x40 <= code[i] <= 0x4F:
        i += 1
    if i >= len(code):
        return None
    opcode = code[i]
    if opcode == 0x0F:
        if i + 1 >= len(code):
            return None
        second = code[i + 1]
        if second in (0x38, 0x3A):
            at = i + 3
        elif second in _TWO_BYTE_NO_MODRM:
            return False
        else:
            at = i + 2
    elif opcode in _ONE_BYTE_MODRM:
        at = i + 1
    else:
        return False
    return _modrm_is_rip_relative(code[at]) if at < len(code) else None


ENDBR64 = bytes.fromhex("f30f1efa")


def kernel_adds_caller(code: bytes) -> bool:
    """Whether the kernel's user stack walk (x86-64, Linux 6.11 and later) adds the caller itself at a
    uprobe on this instruction: it takes ``push %rbp`` and ``endbr64`` for a function's first
    instruction and then adds the return address found at the stack pointer."""
    return code[:1] == b"\x55" or code[:4] == ENDBR64


def describe_site(code: bytes) -> Optional[str]:
    """A warning for an expensive site, or None when the site is cheap or unknown."""
    if is_rip_relative(code):
        return ("its first instruction is %rip-relative: the kernel single-steps it out of line with a "
                "fixup, about 15 us per hit (35x a NOP site); probe another instruction if hits are frequent")
    return None


def read_site(path: str, offset: int, length: int = 16) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)
    except OSError:
        return b""
