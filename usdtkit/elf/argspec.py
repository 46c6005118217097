"""USDT argument specs: parse ``-4@%edi 8@-16(%rbp) 8@[sp, 16]`` into typed :class:`Arg` values and back.

``sys/sdt.h`` asks the compiler to describe each probe argument with an ``asm`` operand, and stores the
text the assembler would accept in the probe's note, one ``SIZE@OPERAND`` token per argument:

* ``SIZE`` is the argument's size in bytes, negative when the C type is signed (``-4`` is an ``int``).
  A token without ``SIZE@`` (very old notes) is read as an unsigned 8-byte value.
* ``OPERAND`` is in the target's assembler syntax.  x86_64 (AT&T): a register ``%r12d``, an immediate
  ``$-9``, memory ``disp(%base,%index,scale)`` or rip-relative ``40+CheckpointStats(%rip)``.  aarch64:
  a register ``x0``/``w1``, an immediate ``5``, memory ``[x19, -8]``.

Each call site gets its own spec because the compiler chose where the values live at that site.
Operands usdtkit cannot read (other architectures, ``%fs:`` segments, vector registers, symbolic
immediates) become :class:`Unsupported` with the raw text kept in :attr:`Arg.raw`: parsing never raises.

:func:`format_arg` prints an :class:`Arg` back as spec text; ``parse_arg(format_arg(a))`` gives ``a``
back (with ``raw`` set to the printed text).
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Mapping, Optional, Tuple

from ..errors import UsageError
from .model import Arg, Constant, Location, Memory, Register, RegisterValue, SymbolRelative, Unsupported

# --------------------------------------------------------------------------- register tables
#: x86 spelling -> (canonical 64-bit name, bits, shift).
X86_REGISTERS: Dict[str, Tuple[str, int, int]] = {}
#: (canonical name, bits, shift) -> preferred spelling (first registered wins).
_X86_SPELLING: Dict[Tuple[str, int, int], str] = {}


def _x86(spelling: str, name: str, bits: int, shift: int = 0) -> None:
    X86_REGISTERS[spelling] = (name, bits, shift)
    _X86_SPELLING.setdefault((name, bits, shift), spelling)


for _n in ("a", "b", "c", "d"):
    _x86(f"r{_n}x", f"r{_n}x", 64)
    _x86(f"e{_n}x", f"r{_n}x", 32)
    _x86(f"{_n}x", f"r{_n}x", 16)
    _x86(f"{_n}l", f"r{_n}x", 8)
    _x86(f"{_n}h", f"r{_n}x", 8, 8)
for _n in ("si", "di", "bp", "sp"):
    _x86(f"r{_n}", f"r{_n}", 64)
    _x86(f"e{_n}", f"r{_n}", 32)
    _x86(_n, f"r{_n}", 16)
    _x86(f"{_n}l", f"r{_n}", 8)
for _i in range(8, 16):
    _x86(f"r{_i}", f"r{_i}", 64)
    _x86(f"r{_i}d", f"r{_i}", 32)
    _x86(f"r{_i}w", f"r{_i}", 16)
    _x86(f"r{_i}b", f"r{_i}", 8)
    _x86(f"r{_i}l", f"r{_i}", 8)  # Intel's spelling of the low byte; GAS accepts it too
_x86("rip", "rip", 64)

#: aarch64 spelling -> (canonical name, bits).
A64_REGISTERS: Dict[str, Tuple[str, int]] = {}
for _i in range(31):
    A64_REGISTERS[f"x{_i}"] = (f"x{_i}", 64)
    A64_REGISTERS[f"w{_i}"] = (f"x{_i}", 32)
A64_REGISTERS.update(sp=("sp", 64), wsp=("sp", 32), xzr=("xzr", 64), wzr=("xzr", 32))
_A64_SPELLING = {v: k for k, v in A64_REGISTERS.items()}

SUPPORTED_ARCHES = ("x86_64", "aarch64")
SIZES = (1, 2, 4, 8)
SCALES = (1, 2, 4, 8)


def x86_register(spelling: str) -> Optional[Register]:
    """The :class:`Register` for an x86_64 spelling without ``%`` (``r12d``), or None."""
    info = X86_REGISTERS.get(spelling)
    return None if info is None else Register(info[0], info[1], info[2], spelling)


def a64_register(spelling: str) -> Optional[Register]:
    """The :class:`Register` for an aarch64 spelling (``w1``, ``sp``), or None."""
    info = A64_REGISTERS.get(spelling)
    return None if info is None else Register(info[0], info[1], 0, spelling)


# --------------------------------------------------------------------------- numbers
_INT = r"[-+]?(?:0[xX][0-9a-fA-F]+|[0-9]+)"
_INT_RE = re.compile(_INT + r"\Z")


def _int(text: str) -> Optional[int]:
    """A decimal or 0x-hex integer with optional sign, or None."""
    if not _INT_RE.match(text):
        return None
    sign = -1 if text[0] == "-" else 1
    digits = text.lstrip("+-")
    return sign * (int(digits, 16) if digits[:2] in ("0x", "0X") else int(digits, 10))


# --------------------------------------------------------------------------- x86_64 operands
_X86_MEM_RE = re.compile(
    r"(?P<disp>[^()]*)\(\s*(?:%(?P<base>[a-z0-9]+))?\s*"
    r"(?:,\s*%(?P<index>[a-z0-9]+)\s*(?:,\s*(?P<scale>[0-9]+)\s*)?)?\)\Z"
)
_SYMBOL = r"[A-Za-z_.$][A-Za-z0-9_.$@]*"
_SYM_DISP_RE = re.compile(rf"(?:(?P<pre>{_INT})\+)?(?P<sym>{_SYMBOL})(?P<post>[-+](?:0[xX][0-9a-fA-F]+|[0-9]+))?\Z")


def _parse_x86(op: str) -> Location:
    if not op:
        return Unsupported("empty operand")
    if ":" in op:
        return Unsupported("segment-relative operand")
    head = op[0]
    if head == "%":
        reg = x86_register(op[1:])
        return RegisterValue(reg) if reg else Unsupported(f"register {op} is not supported")
    if head == "$":
        value = _int(op[1:])
        return Constant(value) if value is not None else Unsupported("symbolic immediate")
    m = _X86_MEM_RE.match(op)
    if m is None:
        if _int(op) is not None or re.match(_SYMBOL + r"\Z", op):
            return Unsupported("absolute memory operand")
        return Unsupported("unrecognised operand")
    base = index = None
    if m["base"]:
        base = x86_register(m["base"])
        if base is None:
            return Unsupported(f"register %{m['base']} is not supported")
    if m["index"]:
        index = x86_register(m["index"])
        if index is None:
            return Unsupported(f"register %{m['index']} is not supported")
    scale = 1
    if m["scale"] is not None:
        scale = int(m["scale"])
        if scale not in SCALES or index is None:
            return Unsupported(f"bad scale {m['scale']}")
    if base is None and index is None:
        return Unsupported("memory operand without registers")
    disp = m["disp"].strip()
    offset = _int(disp) if disp else 0
    if offset is not None:
        return Memory(base, offset, index, scale)
    sm = _SYM_DISP_RE.match(disp)
    if sm is None:
        return Unsupported("unrecognised displacement")
    if base is None or base.spelled != "rip" or index is not None:
        return Unsupported("symbolic displacement without a %rip base")
    offset = (_int(sm["pre"]) if sm["pre"] else 0) + (_int(sm["post"]) if sm["post"] else 0)
    return SymbolRelative(sm["sym"], offset)


def _format_x86_reg(reg: Register) -> str:
    spelling = reg.spelled or _X86_SPELLING.get((reg.name, reg.bits, reg.shift))
    if spelling is None:
        raise UsageError(f"cannot spell x86_64 register {reg}")
    return "%" + spelling


def _format_x86(loc: Location) -> str:
    if isinstance(loc, RegisterValue):
        return _format_x86_reg(loc.register)
    if isinstance(loc, Constant):
        return f"${loc.value}"
    if isinstance(loc, Memory):
        disp = str(loc.offset) if loc.offset else ""
        base = _format_x86_reg(loc.base) if loc.base is not None else ""
        if loc.index is not None:
            return f"{disp}({base},{_format_x86_reg(loc.index)},{loc.scale})"
        if loc.base is None:
            raise UsageError("memory operand without registers")
        return f"{disp}({base})"
    if isinstance(loc, SymbolRelative):
        prefix = f"{loc.offset}+" if loc.offset else ""
        return f"{prefix}{loc.symbol}(%rip)"
    raise UsageError(f"cannot format {loc!r} for x86_64")


# --------------------------------------------------------------------------- aarch64 operands
_A64_MEM_RE = re.compile(
    r"\[\s*(?P<base>[a-z0-9]+)\s*(?:,\s*(?P<second>[^,\]]+?)\s*(?:,\s*lsl\s*#?(?P<shift>[0-9]+)\s*)?)?\]\Z"
)


def _parse_a64(op: str) -> Location:
    if not op:
        return Unsupported("empty operand")
    reg = a64_register(op)
    if reg is not None:
        return RegisterValue(reg)
    value = _int(op[1:] if op[0] == "#" else op)
    if value is not None:
        return Constant(value)
    m = _A64_MEM_RE.match(op)
    if m is None:
        return Unsupported("unrecognised operand")
    base = a64_register(m["base"])
    if base is None or base.bits != 64:
        return Unsupported(f"bad base register {m['base']}")
    second = m["second"]
    if second is None:
        return Memory(base, 0)
    offset = _int(second[1:] if second[0] == "#" else second)
    if offset is not None and m["shift"] is None:
        return Memory(base, offset)
    index = a64_register(second)
    if index is None or index.bits != 64:
        return Unsupported(f"unsupported memory operand {op}")
    shift = int(m["shift"]) if m["shift"] is not None else 0
    if shift > 3:
        return Unsupported(f"bad shift {shift}")
    return Memory(base, 0, index, 1 << shift)


def _format_a64_reg(reg: Register) -> str:
    spelling = reg.spelled or _A64_SPELLING.get((reg.name, reg.bits))
    if spelling is None:
        raise UsageError(f"cannot spell aarch64 register {reg}")
    return spelling


def _format_a64(loc: Location) -> str:
    if isinstance(loc, RegisterValue):
        return _format_a64_reg(loc.register)
    if isinstance(loc, Constant):
        return str(loc.value)
    if isinstance(loc, Memory) and loc.base is not None:
        base = _format_a64_reg(loc.base)
        if loc.index is not None:
            if loc.offset:
                raise UsageError("aarch64 memory operands cannot combine an index and an offset")
            shift = loc.scale.bit_length() - 1
            tail = f", lsl {shift}" if shift else ""
            return f"[{base}, {_format_a64_reg(loc.index)}{tail}]"
        return f"[{base}, {loc.offset}]" if loc.offset else f"[{base}]"
    raise UsageError(f"cannot format {loc!r} for aarch64")


_PARSERS = {"x86_64": _parse_x86, "aarch64": _parse_a64}
_FORMATTERS = {"x86_64": _format_x86, "aarch64": _format_a64}

# --------------------------------------------------------------------------- tokens
_SIZE_RE = re.compile(r"\s*(-?)([0-9]+)(f?)@(.*)\Z", re.S)
_CACHE: Dict[Tuple[str, str], Arg] = {}
_ARGS_CACHE: Dict[Tuple[str, str], Tuple[Arg, ...]] = {}
_CACHE_LIMIT = 1 << 14


def parse_arg(token: str, arch: str = "x86_64") -> Arg:
    """Parse one ``SIZE@OPERAND`` token.  Never raises: unreadable operands become Unsupported."""
    key = (token, arch)
    arg = _CACHE.get(key)
    if arg is None:
        arg = _parse_arg(token, arch)
        if len(_CACHE) < _CACHE_LIMIT:
            _CACHE[key] = arg
    return arg


def _parse_arg(token: str, arch: str) -> Arg:
    m = _SIZE_RE.match(token)
    if m is None:
        size, signed, operand = 8, False, token.strip()
    else:
        size, signed, operand = int(m[2]), m[1] == "-", m[4].strip()
        if m[3]:
            return Arg(size, signed, Unsupported("floating-point argument"), token, arch)
        if size not in SIZES:
            return Arg(size, signed, Unsupported(f"unsupported argument size {size}"), token, arch)
    parser = _PARSERS.get(arch)
    if parser is None:
        loc: Location = Unsupported(f"argument specs of {arch} are not supported")
    else:
        loc = parser(operand)
    return Arg(size, signed, loc, token, arch)


def split_args(text: str) -> Tuple[str, ...]:
    """Split an argument string into tokens on whitespace outside ``[...]`` and ``(...)``."""
    if "[" not in text and ", " not in text:
        return tuple(text.split())
    tokens = []
    depth = 0
    start = None
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth = max(0, depth - 1)
        if ch.isspace() and depth == 0:
            if start is not None:
                tokens.append(text[start:i])
                start = None
        elif start is None:
            start = i
    if start is not None:
        tokens.append(text[start:])
    return tuple(tokens)


def parse_args(text: str, arch: str = "x86_64") -> Tuple[Arg, ...]:
    """Parse a whole argument string (a note's ``Arguments``) into one :class:`Arg` per token."""
    key = (text, arch)
    args = _ARGS_CACHE.get(key)
    if args is None:
        args = tuple(parse_arg(tok, arch) for tok in split_args(text))
        if len(_ARGS_CACHE) < _CACHE_LIMIT:
            _ARGS_CACHE[key] = args
    return args


def symbols_of(args: Iterable[Arg]) -> set:
    """Names of the symbols rip-relative arguments refer to."""
    return {a.location.symbol for a in args if isinstance(a.location, SymbolRelative)}


def with_symbol_addresses(args: Tuple[Arg, ...], addresses: Mapping[str, int]) -> Tuple[Arg, ...]:
    """``args`` with each :class:`SymbolRelative` given ``address = symbol value + offset``."""
    out = []
    for a in args:
        loc = a.location
        if isinstance(loc, SymbolRelative) and loc.symbol in addresses:
            loc = SymbolRelative(loc.symbol, loc.offset, addresses[loc.symbol] + loc.offset)
            a = Arg(a.size, a.signed, loc, a.raw, a.arch)
        out.append(a)
    return tuple(out)


# --------------------------------------------------------------------------- printing
def format_location(loc: Location, arch: str = "x86_64") -> str:
    """The operand text of ``loc`` in ``arch``'s assembler syntax (UsageError if not expressible)."""
    formatter = _FORMATTERS.get(arch)
    if formatter is None:
        raise UsageError(f"argument specs of {arch} are not supported")
    return formatter(loc)


def format_arg(arg: Arg) -> str:
    """Print ``arg`` as a ``SIZE@OPERAND`` token; an Unsupported argument prints its raw text."""
    if isinstance(arg.location, Unsupported):
        return arg.raw
    size = -arg.size if arg.signed else arg.size
    return f"{size}@{format_location(arg.location, arg.arch)}"


def format_args(args: Iterable[Arg]) -> str:
    """Print a whole argument string."""
    return " ".join(format_arg(a) for a in args)
