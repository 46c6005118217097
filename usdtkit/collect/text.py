"""Values as the kernel wrote them, read back: two's complement numbers and C strings that may be cut."""
from __future__ import annotations

from typing import Tuple

CUT_MARK = "\u2026"  # shown after a string that was longer than the bytes kept of it


def signed64(value: int) -> int:
    """A 64-bit two's complement value read as unsigned, as the signed number it is."""
    return value - (1 << 64) if value >> 63 else value


def c_string(raw: bytes) -> str:
    """The NUL-terminated text at the start of ``raw`` (a name such as a task's comm)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def decode_text(raw: bytes, limit: int) -> Tuple[str, bool]:
    """The C string in ``raw`` shown up to ``limit`` bytes, and whether it was longer (then the text
    ends with :data:`CUT_MARK`).  The kernel keeps one byte more than ``limit`` to tell the two apart."""
    data = raw.split(b"\0", 1)[0]
    cut = len(data) > limit
    text = data[:limit].decode("utf-8", errors="replace")
    return (text + CUT_MARK, True) if cut else (text, False)
