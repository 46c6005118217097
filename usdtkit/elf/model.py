"""Typed results of discovery: USDT probes, their call sites and arguments, function symbols.

A USDT probe (``provider:name``) is declared in the ELF note section ``.note.stapsdt``: one note per
*call site*, each carrying the site's address, the link-time address of ``.stapsdt.base`` (used to undo
prelinking), the address of the probe's semaphore (0 if none) and an argument string such as
``-4@%edi 8@-16(%rbp) 8@$5``.  Each ``SIZE@LOCATION`` token says how many bytes the argument has (negative
for signed) and where the compiler left it at that site.  Different call sites of one probe usually put
the same argument in different places, so every :class:`UsdtLocation` has its own :class:`Arg` list.

These classes are plain frozen dataclasses: cheap to build, easy to compare, print and serialise
(:meth:`to_json` gives the stable JSON shape used by ``usdtkit list --json``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple, Union


# --------------------------------------------------------------------------- argument locations
@dataclass(frozen=True)
class Register:
    """A machine register as an argument spec names it.

    ``name`` is the canonical full-width name (x86_64: ``rax`` .. ``r15``, ``rip``; aarch64: ``x0`` ..
    ``x30``, ``sp``), ``bits`` the width the spec used (``%eax`` is ``rax`` with 32 bits) and ``shift``
    the bit position of the part used (8 for the x86 high-byte registers ``%ah`` .. ``%dh``, else 0).
    ``spelled`` keeps the spec's own spelling (``eax``, ``w1``) for printing back.
    """

    name: str
    bits: int = 64
    shift: int = 0
    spelled: str = ""


@dataclass(frozen=True)
class Constant:
    """An immediate value: x86 ``$-9``, aarch64 ``5``."""

    value: int


@dataclass(frozen=True)
class RegisterValue:
    """The value is in a register: ``%rdi``, ``%r12d``, ``x0``, ``w1``."""

    register: Register


@dataclass(frozen=True)
class Memory:
    """The value is in memory at ``base + index * scale + offset``.

    Covers ``(%rdi)``, ``-16(%rbp)``, ``8(%rax,%rdx,4)`` and aarch64 ``[x19, -8]``.  ``index`` is None
    when there is no index register; ``base`` is None for the x86 index-only form ``(,%rdx,8)``.
    """

    base: Optional[Register]
    offset: int = 0
    index: Optional[Register] = None
    scale: int = 1


@dataclass(frozen=True)
class SymbolRelative:
    """The value is in memory at a symbol plus an offset: ``NBuffers(%rip)``, ``40+CheckpointStats(%rip)``.

    ``address`` is the symbol's link-time address plus ``offset`` when the symbol tables resolved it
    (None otherwise); an attacher relocates it by the object's load bias.
    """

    symbol: str
    offset: int = 0
    address: Optional[int] = None


@dataclass(frozen=True)
class Unsupported:
    """A location usdtkit cannot read (another architecture, ``%fs:`` segments, xmm registers...)."""

    reason: str


Location = Union[Constant, RegisterValue, Memory, SymbolRelative, Unsupported]


@dataclass(frozen=True)
class Arg:
    """One ``SIZE@LOCATION`` token of an argument spec.

    ``size`` is in bytes (1, 2, 4 or 8), ``signed`` comes from a negative size prefix; a token without a
    prefix is taken as an unsigned 8-byte value (what tools do for old notes).
    """

    size: int
    signed: bool
    location: Location
    raw: str
    arch: str = "x86_64"

    @property
    def supported(self) -> bool:
        return not isinstance(self.location, Unsupported)

    def to_json(self) -> dict:
        loc = self.location
        out: dict = {"raw": self.raw, "size": self.size, "signed": self.signed}
        if isinstance(loc, Constant):
            out.update(kind="constant", value=loc.value)
        elif isinstance(loc, RegisterValue):
            out.update(kind="register", register=loc.register.spelled or loc.register.name)
        elif isinstance(loc, Memory):
            base = None if loc.base is None else (loc.base.spelled or loc.base.name)
            out.update(kind="memory", base=base, offset=loc.offset)
            if loc.index is not None:
                out.update(index=loc.index.spelled or loc.index.name, scale=loc.scale)
        elif isinstance(loc, SymbolRelative):
            out.update(kind="symbol", symbol=loc.symbol, offset=loc.offset, address=loc.address)
        else:
            out.update(kind="unsupported", reason=loc.reason)
        return out


# --------------------------------------------------------------------------- USDT probes
@dataclass(frozen=True)
class UsdtLocation:
    """One call site of a USDT probe, as its note says plus what an attacher needs.

    ``address``, ``base`` and ``semaphore`` are the note's raw values.  ``pc`` and
    ``semaphore_address`` are the link-time virtual addresses after the ``.stapsdt.base`` (prelink)
    adjustment; ``file_offset`` and ``semaphore_offset`` are their offsets in the file (what the kernel's
    uprobe and ``ref_ctr_offset`` interfaces take).  ``semaphore_offset`` is None without a semaphore.
    """

    address: int
    base: int
    semaphore: int
    arguments: str
    args: Tuple[Arg, ...]
    pc: int
    file_offset: int
    semaphore_address: int = 0
    semaphore_offset: Optional[int] = None

    def to_json(self) -> dict:
        return {
            "address": self.address,
            "base": self.base,
            "semaphore": self.semaphore,
            "arguments": self.arguments,
            "pc": self.pc,
            "file_offset": self.file_offset,
            "semaphore_address": self.semaphore_address,
            "semaphore_offset": self.semaphore_offset,
            "args": [a.to_json() for a in self.args],
        }


@dataclass(frozen=True)
class UsdtProbe:
    """A USDT probe ``provider:name`` in one ELF object, with every call site."""

    provider: str
    name: str
    binary: str
    locations: Tuple[UsdtLocation, ...] = field(default_factory=tuple)

    @property
    def semaphore(self) -> int:
        """The note's semaphore value (0 when the probe has none)."""
        return self.locations[0].semaphore if self.locations else 0

    @property
    def semaphore_offset(self) -> Optional[int]:
        return self.locations[0].semaphore_offset if self.locations else None

    @property
    def qualified_name(self) -> str:
        return f"{self.provider}:{self.name}"

    def to_json(self) -> dict:
        return {
            "provider": self.provider,
            "name": self.name,
            "binary": self.binary,
            "semaphore": self.semaphore,
            "semaphore_offset": self.semaphore_offset,
            "locations": [loc.to_json() for loc in self.locations],
        }


# --------------------------------------------------------------------------- symbols
@dataclass(frozen=True)
class FunctionSymbol:
    """A function symbol of ``.symtab``, ``.dynsym`` or a debug file.

    ``address`` is the link-time value, ``file_offset`` the offset a uprobe takes, ``version`` the GNU
    symbol version (``GLIBC_2.2.5``) when there is one, ``source`` the table it came from.

    ``ifunc`` marks an indirect function (``STT_GNU_IFUNC``, glibc's ``strlen``, ``memcpy``): its address
    is a *resolver* the dynamic loader calls once, at load time, to pick the implementation every call
    then goes to (``__strlen_avx2`` on one CPU, ``__strlen_sse2`` on another).  A probe on the symbol
    therefore sees the resolver run, not the calls.
    """

    name: str
    address: int
    size: int
    file_offset: int
    binding: str
    binary: str
    version: Optional[str] = None
    source: str = ".symtab"
    demangled: Optional[str] = None
    ifunc: bool = False

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "address": self.address,
            "size": self.size,
            "file_offset": self.file_offset,
            "binding": self.binding,
            "ifunc": self.ifunc,
            "version": self.version,
            "source": self.source,
            "demangled": self.demangled,
            "binary": self.binary,
        }
