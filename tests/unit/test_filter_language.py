"""The filter language: what parses into which tree, and one clear error naming the column for the rest."""
from __future__ import annotations

import pytest

from usdtkit.errors import UsageError
from usdtkit.expr.fields import Field
from usdtkit.expr.filters import Filter, render
from usdtkit.expr.tree import Arg, Binary, Builtin, Cast, Int, Str, Text, Unary, conjuncts


@pytest.mark.parametrize("text,shown", [
    # C's precedence: * over +, + over <<, << over <, < over ==, == over &, & over ^ over |, | over && over ||
    ("1 + 2 * 3", "(1 + (2 * 3))"),
    ("arg0 << 1 + 2", "(arg0 << (1 + 2))"),
    ("arg0 + 1 < arg1 << 2", "((arg0 + 1) < (arg1 << 2))"),
    ("arg0 & 1 == 1", "(arg0 & (1 == 1))"),
    ("arg0 | arg1 ^ arg2 & 4", "(arg0 | (arg1 ^ (arg2 & 4)))"),
    ("pid == 1 || pid == 2 && tid == 3", "((pid == 1) || ((pid == 2) && (tid == 3)))"),
    ("(pid == 1 || pid == 2) && tid == 3", "(((pid == 1) || (pid == 2)) && (tid == 3))"),
    ("10 - 4 - 3", "((10 - 4) - 3)"),
    ("!arg0", "!arg0"),
    ("~arg0 == -1", "(~arg0 == -1)"),
    ("-arg0 > 3", "(-arg0 > 3)"),
    ("(int32)retval < 0", "((int32)retval < 0)"),
    ("(uint8)(arg0 + 1) == 0", "((uint8)(arg0 + 1) == 0)"),
    ('str(arg1) == "GET" && arg0 >= 2', '((str(arg1) == "GET") && (arg0 >= 2))'),
    ('str(arg1, 3) != "abc"', '(str(arg1, 3) != "abc")'),
    ('str(arg1 + 8) == ""', '(str((arg1 + 8)) == "")'),
    ("comm == 'nginx'", '(comm == "nginx")'),
    ('"nginx" == comm', '("nginx" == comm)'),
    ("uid == 0 && gid == 0 && cpu < 4 && cgroup != 0", "((((uid == 0) && (gid == 0)) && (cpu < 4)) && (cgroup != 0))"),
    ("arg0", "arg0"),
])
def test_parses_with_c_precedence(text, shown):
    parsed = Filter.parse(text)
    assert render(parsed.root) == shown
    assert Filter.parse(shown) == parsed  # the rendering parses back to the same tree
    assert str(parsed) == text


@pytest.mark.parametrize("text,value,signed", [
    ("0x10", 16, True), ("0o17", 15, True), ("0b101", 5, True), ("-5", -5, True),
    ("9223372036854775807", (1 << 63) - 1, True), ("0x8000000000000000", 1 << 63, False),
    ("0xffffffffffffffff", (1 << 64) - 1, False), ("-9223372036854775808", -(1 << 63), True),
])
def test_integer_literals_and_their_types(text, value, signed):
    root = Filter.parse(f"arg0 == {text}").root
    assert isinstance(root, Binary) and root.right == Int(value)
    assert root.right.signed is signed


def test_string_escapes_become_bytes():
    root = Filter.parse(r'str(arg0) == "a\"b\\c\n\x41é"').root
    assert root.right == Text(b'a"b\\c\nA' + "é".encode())


def test_fields_a_filter_reads():
    fields = Filter.parse('str(arg1) == "x" && retval > 0 || comm == "a" && arg3 & uid').root.fields()
    assert set(fields) == {Field("str", 1), Field("arg", 1), Field("retval"), Field("comm"), Field("arg", 3),
                           Field("uid")}


def test_conjuncts_split_the_top_level_and_only():
    root = Filter.parse("arg0 > 1 && (pid == 2 || tid == 3) && retval != 0").root
    assert [render(t) for t in conjuncts(root)] == ["(arg0 > 1)", "((pid == 2) || (tid == 3))", "(retval != 0)"]


def test_trees_made_in_code_check_themselves():
    assert Filter.of(Binary("==", Builtin("comm"), Text(b"x"))).text == '(comm == "x")'
    for build in (lambda: Arg(12), lambda: Int(1 << 64), lambda: Text(b"a\0b"), lambda: Builtin("evil"),
                  lambda: Binary(";", Int(1), Int(2)), lambda: Cast("int7", Int(1)), lambda: Unary("+", Int(1)),
                  lambda: Str(Text(b"x")), lambda: Binary("<", Builtin("comm"), Text(b"x")),
                  lambda: Binary("==", Str(Arg(0)), Str(Arg(1))), lambda: Filter.of(Text(b"x"))):
        with pytest.raises(UsageError):
            build()


@pytest.mark.parametrize("text,column,message", [
    ("", 1, "the filter is empty"),
    ("arg0 >", 7, "expected a value after '>'"),
    ("arg0 = 5", 6, "'=' assigns; compare with '=='"),
    ("comm == nginx", 9, "unknown name 'nginx'"),
    ("arg12 > 1", 1, "at most 12 arguments"),
    ('str(arg1) > "a"', 11, "strings take == and !="),
    ("comm == 5", 6, "compares a string with an integer"),
    ("arg0 / 0", 6, "'/' by zero"),
    ("arg0 % 0", 6, "'%' by zero"),
    ("arg0 << 64", 6, "shift by 64"),
    ("(arg0 > 1", 10, "expected ')' to close the '(' at column 1"),
    ("arg0 > 1)", 9, "unexpected ')'"),
    ("arg0 1", 6, "unexpected '1'"),
    ("foo(1)", 1, "unknown function 'foo'"),
    ('"abc"', 1, "a filter is a condition"),
    ("str(arg0) == str(arg1)", 11, "compare str(...) or comm with a string literal"),
    ('comm == "0123456789abcdef"', 6, "comm holds at most 15 bytes"),
    ("arg0 > 0x1ffffffffffffffff", 8, "does not fit in 64 bits"),
    ("arg0 == 010", 9, "leading zeros"),
    ("arg0 > 1e3", 8, "'1e3' is not a number"),
    ("arg0 $ 1", 6, "unexpected character '$'"),
    ('comm == "nginx', 9, "string literal is not closed"),
    (r'comm == "\q"', 10, "unknown escape"),
    (r'comm == "a\x00"', 11, "NUL"),
    ("int32 arg0 > 1", 1, "a cast is written (int32)EXPR"),
    ("(int7)arg0 > 1", 2, "unknown name 'int7'"),
    ("str(arg0, 0) == \"a\"", 1, "str() length must be 1 to 255"),
    ("str(arg0, arg1) == \"a\"", 11, "takes a number as LEN"),
    ('str("x") == "x"', 1, "str() reads from an address"),
    ("-comm == 1", 1, "'-' takes an integer"),
    ("arg0 > 5; drop", 9, "unexpected character ';'"),
    ("arg0 == #include", 9, "unexpected character '#'"),
    ("arg0 == 1\n", 10, "control characters"),
    ("(" * 40 + "1" + ")" * 40, 33, "nested more than 32 levels"),
    (" + ".join(["1"] * 300) + " == 1", 1, "more than 200 operators inside each other"),
])
def test_each_mistake_is_one_line_with_its_column(text, column, message):
    with pytest.raises(UsageError) as info:
        Filter.parse(text)
    shown = str(info.value)
    assert "\n" not in shown
    assert shown.startswith(f"filter {text!r}, column {column}: ") and message in shown, shown


def test_oversized_and_non_text_filters_are_refused():
    for bad in ("x" * 5000, 5, None, b"arg0 > 1"):
        with pytest.raises(UsageError):
            Filter.parse(bad)  # type: ignore[arg-type]
