"""The one description of a generated program: C text, maps, and the byte layout of records and keys.

:mod:`.codegen` builds a :class:`ProgramLayout`; everything that reads what the program writes (the
record decoder, map readout, any backend or loader) works from it, so a struct is declared once: the
same :class:`StructLayout` prints the C declaration and gives the Python ``struct`` format, with the
padding a C compiler adds under natural alignment.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

from ..expr.fields import Field
from ..plan.resolve import Site

# Per probe: hits kept, events lost, keys lost, reads failed, dones without a start, and dones that
# found their start (kept by the done's own filter or not: what tells a start that was never finished).
STATS_PER_PROBE = 6
STAT_HITS, STAT_LOST_EVENTS, STAT_LOST_KEYS, STAT_READ_ERRORS, STAT_UNMATCHED, STAT_PAIRED = range(6)
PROBE_STATS = 5  # the first five are the ProbeStats users see
WAKE_MAP = "events_wake"  # an array of one u32: nonzero while the event reader waits to be woken

_SIZES = {"u8": 1, "char": 1, "u32": 4, "s32": 4, "u64": 8, "s64": 8}
_CODES = {"u8": "B", "char": "s", "u32": "I", "s32": "i", "u64": "Q", "s64": "q"}


def string_buffer(string_size: int) -> int:
    """Bytes kept for a string shown up to ``string_size`` bytes: one more byte tells a string that was
    cut from one that fits exactly, and one for the NUL."""
    return string_size + 2


@dataclass(frozen=True)
class Member:
    """One struct member: ``ctype name[count]``; ``field`` is what a key member holds."""

    name: str
    ctype: str
    count: int = 1
    field: Optional[Field] = None
    array: bool = False  # declared as an array even with count 1 (char arrays always are)

    @property
    def is_array(self) -> bool:
        return self.array or self.count > 1 or self.ctype == "char"

    @property
    def size(self) -> int:
        return _SIZES[self.ctype] * self.count

    @property
    def align(self) -> int:
        return _SIZES[self.ctype]

    def declaration(self) -> str:
        return f"{self.ctype} {self.name}[{self.count}];" if self.is_array else f"{self.ctype} {self.name};"


@dataclass(frozen=True)
class StructLayout:
    """A C struct and its byte layout (natural alignment, as the compiler lays it out)."""

    name: str
    members: Tuple[Member, ...]
    offsets: Tuple[int, ...] = field(init=False)
    size: int = field(init=False)
    format: struct.Struct = field(init=False, compare=False)

    def __post_init__(self) -> None:
        offsets, codes, at, align = [], ["<"], 0, 1
        for member in self.members:
            pad = -at % member.align
            if pad:
                codes.append(f"{pad}x")
            at += pad
            offsets.append(at)
            code = _CODES[member.ctype]
            codes.append(f"{member.count}s" if member.ctype == "char" else f"{member.count}{code}")
            at += member.size
            align = max(align, member.align)
        tail = -at % align
        if tail:
            codes.append(f"{tail}x")
        object.__setattr__(self, "offsets", tuple(offsets))
        object.__setattr__(self, "size", at + tail)
        object.__setattr__(self, "format", struct.Struct("".join(codes)))

    def declaration(self) -> str:
        body = " ".join(m.declaration() for m in self.members)
        return f"struct {self.name} {{ {body} }};"

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def unpack(self, data: bytes) -> Dict[str, object]:
        """Member values by name (arrays of numbers as tuples, char arrays as bytes)."""
        values = self.format.unpack_from(data)
        out: Dict[str, object] = {}
        at = 0
        for member in self.members:
            if member.is_array and member.ctype != "char":
                out[member.name] = tuple(values[at:at + member.count])
                at += member.count
            else:
                out[member.name] = values[at]
                at += 1
        return out

    def pack(self, **values: object) -> bytes:
        """Bytes for the given member values (missing members are zero): what the kernel would write."""
        flat = []
        for member in self.members:
            value = values.get(member.name)
            if member.ctype == "char":
                flat.append(bytes(value or b""))
            elif member.is_array:
                seq = list(value or ())  # type: ignore[call-overload]
                flat.extend((seq + [0] * member.count)[:member.count])
            else:
                flat.append(int(value or 0))  # type: ignore[call-overload]
        return self.format.pack(*flat)


@dataclass(frozen=True)
class MapLayout:
    """A map the program declares: its kind, key layout (None for arrays indexed by u32), entries."""

    name: str
    kind: str  # percpu_array, array, hash, lru_hash, ringbuf, perf_output, stack_trace
    entries: int
    key: Optional[StructLayout] = None


class Attachment(NamedTuple):
    """One call site of probe ``probe`` (its index) and the entry function attached there.  ``cookie``,
    when set, is given to the kernel with the attachment: an entry function shared by several probes
    reads it back (``bpf_get_attach_cookie``) as the index of the probe that fired."""

    function: str
    site: Site
    retprobe: bool
    probe: int = 0
    cookie: Optional[int] = None


class TracepointAttachment(NamedTuple):
    """A program of the module attached to kernel tracepoint ``category:name``."""

    function: str
    category: str
    name: str


@dataclass(frozen=True)
class ProgramLayout:
    """Everything about one generated program that a loader, a decoder or a reader needs.

    ``text`` depends only on the plan's shape (probes, argument specs, collectors), never on a pid or
    other per-run value: per-run settings go into the ``config`` array map after loading."""

    text: str
    maps: Dict[str, MapLayout]
    attachments: Tuple[Attachment, ...]  # every call site with the entry function attached there
    ringbuf: bool
    record: Optional[StructLayout] = None
    count_key: Optional[StructLayout] = None
    hist_key: Optional[StructLayout] = None
    tracepoints: Tuple[TracepointAttachment, ...] = ()  # attached before the call sites

    def stats_index(self, probe: int, which: int) -> int:
        return probe * STATS_PER_PROBE + which


def key_members(fields: Sequence[Field], string_size: int, comm_len: int) -> Tuple[Member, ...]:
    """Members of a map key holding ``fields`` after ``probe`` and ``errs`` (a bit per field whose read
    failed): numbers first, then text, so there is no padding between members."""
    numbers = [Member(f"k_{f.key_name}", "u64", field=f) for f in fields if not f.is_string]
    texts = [Member(f"k_{f.key_name}", "char", comm_len if f.name == "comm" else string_buffer(string_size),
                    field=f) for f in fields if f.is_string]
    return (Member("probe", "u32"), Member("errs", "u32"), *numbers, *texts)
