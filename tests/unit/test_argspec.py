"""Argument spec parsing and printing: every x86_64 register width, memory forms, aarch64, unsupported."""
from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usdtkit.elf import read_usdt_probes
from usdtkit.elf.argspec import (
    A64_REGISTERS,
    X86_REGISTERS,
    a64_register,
    format_arg,
    format_args,
    parse_arg,
    parse_args,
    split_args,
    x86_register,
)
from usdtkit.elf.model import Arg, Constant, Memory, Register, RegisterValue, SymbolRelative, Unsupported

R = Register


# --------------------------------------------------------------------------- x86_64 registers
@pytest.mark.parametrize(
    "spelling, name, bits, shift",
    [
        ("rax", "rax", 64, 0), ("eax", "rax", 32, 0), ("ax", "rax", 16, 0), ("al", "rax", 8, 0),
        ("ah", "rax", 8, 8), ("bh", "rbx", 8, 8), ("ch", "rcx", 8, 8), ("dh", "rdx", 8, 8),
        ("rdi", "rdi", 64, 0), ("edi", "rdi", 32, 0), ("di", "rdi", 16, 0), ("dil", "rdi", 8, 0),
        ("sil", "rsi", 8, 0), ("bpl", "rbp", 8, 0), ("spl", "rsp", 8, 0), ("esp", "rsp", 32, 0),
        ("r8", "r8", 64, 0), ("r8d", "r8", 32, 0), ("r8w", "r8", 16, 0), ("r8b", "r8", 8, 0),
        ("r9w", "r9", 16, 0), ("r12d", "r12", 32, 0), ("r15b", "r15", 8, 0), ("rip", "rip", 64, 0),
    ],
)
def test_x86_register_widths(spelling, name, bits, shift):
    arg = parse_arg(f"8@%{spelling}")
    assert arg.location == RegisterValue(R(name, bits, shift, spelling))
    assert format_arg(arg) == f"8@%{spelling}"


def test_every_x86_general_register_has_all_widths():
    canon = {v[0] for v in X86_REGISTERS.values()}
    assert canon == {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip"} | {f"r{i}" for i in range(8, 16)}
    for name in canon - {"rip"}:
        widths = {v[1] for v in X86_REGISTERS.values() if v[0] == name}
        assert widths == {8, 16, 32, 64}, name


@pytest.mark.parametrize(
    "token, size, signed, location",
    [
        ("-4@%edi", 4, True, RegisterValue(R("rdi", 32, 0, "edi"))),
        ("8@-16(%rbp)", 8, False, Memory(R("rbp", 64, 0, "rbp"), -16)),
        ("4@(%rdi)", 4, False, Memory(R("rdi", 64, 0, "rdi"), 0)),
        ("4@0(%r13)", 4, False, Memory(R("r13", 64, 0, "r13"), 0)),
        ("8@8(%rax,%rdx,4)", 8, False, Memory(R("rax", 64, 0, "rax"), 8, R("rdx", 64, 0, "rdx"), 4)),
        ("8@(,%rdx,8)", 8, False, Memory(None, 0, R("rdx", 64, 0, "rdx"), 8)),
        ("8@(%rax,%rbx)", 8, False, Memory(R("rax", 64, 0, "rax"), 0, R("rbx", 64, 0, "rbx"), 1)),
        ("8@0x10(%rsp)", 8, False, Memory(R("rsp", 64, 0, "rsp"), 16)),
        ("-4@$5", 4, True, Constant(5)),
        ("-4@$-9", 4, True, Constant(-9)),
        ("1@$0", 1, False, Constant(0)),
        ("-4@NBuffers(%rip)", 4, True, SymbolRelative("NBuffers", 0)),
        ("-4@40+CheckpointStats(%rip)", 4, True, SymbolRelative("CheckpointStats", 40)),
        ("8@counter.lto_priv.0+8(%rip)", 8, False, SymbolRelative("counter.lto_priv.0", 8)),
        ("8@-8+sym(%rip)", 8, False, SymbolRelative("sym", -8)),
        ("8@16(%rip)", 8, False, Memory(R("rip", 64, 0, "rip"), 16)),
        ("2@%r9w", 2, False, RegisterValue(R("r9", 16, 0, "r9w"))),
    ],
)
def test_x86_forms(token, size, signed, location):
    arg = parse_arg(token)
    assert (arg.size, arg.signed, arg.location, arg.raw, arg.arch) == (size, signed, location, token, "x86_64")
    assert arg.supported
    # Printing gives an equivalent spec.
    assert parse_arg(format_arg(arg)).location == location


@pytest.mark.parametrize(
    "token, reason",
    [
        ("8@%fs:40", "segment"),
        ("8@%fs:0x28(%rax)", "segment"),
        ("8@%xmm0", "register %xmm0"),
        ("8@%st(1)", "register"),
        ("8@$sym", "symbolic immediate"),
        ("8@sym(%rax)", "symbolic displacement"),
        ("8@sym(,%rax,8)", "symbolic displacement"),
        ("8@counter", "absolute memory operand"),
        ("8@0x601040", "absolute memory operand"),
        ("8@(%rax,%rbx,3)", "bad scale"),
        ("8@(%foo)", "register %foo"),
        ("8f@%xmm1", "floating-point"),
        ("16@%rax", "size 16"),
        ("3@%eax", "size 3"),
        ("8@", "empty operand"),
        ("8@@@", "unrecognised"),
    ],
)
def test_x86_unsupported_keeps_raw(token, reason):
    arg = parse_arg(token)
    assert isinstance(arg.location, Unsupported)
    assert reason in arg.location.reason
    assert arg.raw == token and not arg.supported
    assert format_arg(arg) == token


def test_token_without_size_is_unsigned_8_bytes():
    arg = parse_arg("%rdi")
    assert (arg.size, arg.signed, arg.location) == (8, False, RegisterValue(R("rdi", 64, 0, "rdi")))


# --------------------------------------------------------------------------- aarch64
@pytest.mark.parametrize(
    "token, size, signed, location",
    [
        ("8@x0", 8, False, RegisterValue(R("x0", 64, 0, "x0"))),
        ("-4@w1", 4, True, RegisterValue(R("x1", 32, 0, "w1"))),
        ("8@x30", 8, False, RegisterValue(R("x30", 64, 0, "x30"))),
        ("8@sp", 8, False, RegisterValue(R("sp", 64, 0, "sp"))),
        ("8@[sp, 16]", 8, False, Memory(R("sp", 64, 0, "sp"), 16)),
        ("8@[x19, -8]", 8, False, Memory(R("x19", 64, 0, "x19"), -8)),
        ("8@[x1]", 8, False, Memory(R("x1", 64, 0, "x1"), 0)),
        ("8@[x1, #24]", 8, False, Memory(R("x1", 64, 0, "x1"), 24)),
        ("8@[x1, x2]", 8, False, Memory(R("x1", 64, 0, "x1"), 0, R("x2", 64, 0, "x2"), 1)),
        ("8@[x1, x2, lsl 3]", 8, False, Memory(R("x1", 64, 0, "x1"), 0, R("x2", 64, 0, "x2"), 8)),
        ("4@5", 4, False, Constant(5)),
        ("-4@-4", 4, True, Constant(-4)),
    ],
)
def test_aarch64_forms(token, size, signed, location):
    arg = parse_arg(token, "aarch64")
    assert (arg.size, arg.signed, arg.location, arg.arch) == (size, signed, location, "aarch64")
    assert parse_arg(format_arg(arg), "aarch64").location == location


@pytest.mark.parametrize("token", ["-8@[x3, #:lo12:.LANCHOR0]", "8@[x0, 8]!", "8@v0", "8@[w1, 8]", "8@q0"])
def test_aarch64_unsupported(token):
    arg = parse_arg(token, "aarch64")
    assert isinstance(arg.location, Unsupported) and arg.raw == token


@pytest.mark.parametrize("arch", ["riscv", "ppc64", "s390x", "i386", "machine-9999"])
def test_other_architectures_are_unsupported(arch):
    arg = parse_arg("8@%r0", arch)
    assert isinstance(arg.location, Unsupported) and arch in arg.location.reason
    assert (arg.size, arg.raw, arg.arch) == (8, "8@%r0", arch)


def test_split_keeps_bracketed_spaces():
    assert split_args("8@[sp, 16] -4@w1  8@[x19, -8]") == ("8@[sp, 16]", "-4@w1", "8@[x19, -8]")
    assert split_args("-4@%edi 8@8(%rax,%rdx,4)") == ("-4@%edi", "8@8(%rax,%rdx,4)")
    assert split_args("") == ()
    assert len(parse_args("8@[sp, 16] 4@5", "aarch64")) == 2


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_parser_never_raises(text):
    for arch in ("x86_64", "aarch64", "riscv"):
        for arg in parse_args(text, arch):
            assert isinstance(arg, Arg)
            assert format_arg(arg)  # printable back


# --------------------------------------------------------------------------- property: print -> parse
def _x86_regs():
    return st.sampled_from(sorted(X86_REGISTERS)).map(x86_register)


def _x86_base():
    return st.sampled_from(sorted(s for s, v in X86_REGISTERS.items() if v[1] == 64)).map(x86_register)


_ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
_symbols = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,12}", fullmatch=True)


def _x86_locations():
    index = st.sampled_from(sorted(s for s, v in X86_REGISTERS.items() if v[1] == 64 and s != "rip")).map(x86_register)
    memory = st.one_of(
        st.builds(Memory, _x86_base(), _ints),
        st.builds(Memory, st.one_of(st.none(), _x86_base()), _ints, index, st.sampled_from([1, 2, 4, 8])),
    )
    return st.one_of(
        st.builds(Constant, _ints),
        st.builds(RegisterValue, _x86_regs()),
        memory,
        st.builds(SymbolRelative, _symbols, _ints),
    )


def _a64_locations():
    regs = st.sampled_from(sorted(A64_REGISTERS)).map(a64_register)
    bases = st.sampled_from(sorted(s for s, v in A64_REGISTERS.items() if v[1] == 64)).map(a64_register)
    return st.one_of(
        st.builds(Constant, _ints),
        st.builds(RegisterValue, regs),
        st.builds(Memory, bases, _ints),
        st.builds(Memory, bases, st.just(0), bases, st.sampled_from([1, 2, 4, 8])),
    )


def _args(arch, locations):
    return st.builds(
        lambda size, signed, loc: Arg(size, signed, loc, "", arch),
        st.sampled_from([1, 2, 4, 8]), st.booleans(), locations,
    )


@given(st.one_of(_args("x86_64", _x86_locations()), _args("aarch64", _a64_locations())))
@settings(max_examples=500, deadline=None)
def test_parse_of_format_is_identity(arg):
    text = format_arg(arg)
    assert parse_arg(text, arg.arch) == dataclasses.replace(arg, raw=text)


@given(st.lists(_args("x86_64", _x86_locations()), max_size=8))
@settings(max_examples=200, deadline=None)
def test_whole_argument_strings_round_trip(args):
    text = format_args(args)
    assert [dataclasses.replace(a, raw="") for a in parse_args(text)] == args


# --------------------------------------------------------------------------- property: parse -> format
_x86_operands = st.one_of(
    st.sampled_from(sorted(X86_REGISTERS)).map(lambda r: "%" + r),
    _ints.map(lambda v: f"${v}"),
    st.tuples(st.one_of(st.just(""), _ints.map(str), _ints.map(hex)),
              st.sampled_from(["rax", "rbp", "r12", "rsp"]), st.sampled_from(["", ",%rdx,2", ",%r9,8"]))
    .map(lambda t: f"{t[0]}(%{t[1]}{t[2]})"),
    st.tuples(st.one_of(st.just(""), st.integers(1, 4096).map(lambda v: f"{v}+")), _symbols)
    .map(lambda t: f"{t[0]}{t[1]}(%rip)"),
)


@given(st.sampled_from(["1", "-1", "2", "-2", "4", "-4", "8", "-8"]), _x86_operands)
@settings(max_examples=400, deadline=None)
def test_format_of_parse_is_equivalent(size, operand):
    spec = f"{size}@{operand}"
    arg = parse_arg(spec)
    assert arg.supported, arg
    again = parse_arg(format_arg(arg))
    assert (again.size, again.signed, again.location) == (arg.size, arg.signed, arg.location)


REAL = [
    "/usr/bin/python3.11",
    "/usr/lib/postgresql/15/bin/postgres",
    "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so",
    "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
]


@pytest.mark.parametrize("path", REAL)
def test_real_specs_parse_and_print_back(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} not installed")
    specs = [loc for p in read_usdt_probes(path) for loc in p.locations]
    assert specs
    for loc in specs:
        assert all(a.supported for a in loc.args), loc.arguments
        printed = format_args(loc.args)
        # Identical text except for GCC's explicit zero displacement `0(%r13)`, which we print `(%r13)`.
        assert printed == " ".join(t.replace("@0(", "@(") for t in loc.arguments.split()), loc.arguments
        assert [a.location for a in parse_args(printed)] == [_unresolved(a.location) for a in loc.args]


def _unresolved(location):
    if isinstance(location, SymbolRelative):
        return dataclasses.replace(location, address=None)
    return location
