"""Probe specs and filters: bpftrace syntax parsed into typed values, hostile text refused early."""
from __future__ import annotations

import pytest

from usdtkit.errors import UsageError
from usdtkit.plan.refs import ProbeRef, parse_probe
from usdtkit.expr.fields import Field
from usdtkit.plan.request import HistSpec


@pytest.mark.parametrize(
    "text, expected",
    [
        ("usdt:/usr/bin/python3.11:python:function__entry",
         ProbeRef("usdt", "/usr/bin/python3.11", "function__entry", "python")),
        ("usdt::python:gc__start", ProbeRef("usdt", "", "gc__start", "python")),
        ("usdt:./app:tick", ProbeRef("usdt", "./app", "tick")),
        ("uprobe:libc:malloc", ProbeRef("uprobe", "libc", "malloc")),
        ("uprobe:/bin/app:main+0x10", ProbeRef("uprobe", "/bin/app", "main", offset=16)),
        ("uprobe:/bin/app:0x1139", ProbeRef("uprobe", "/bin/app", "0x1139", address=0x1139)),
        ("uretprobe:libc:_ZN3foo3barEv", ProbeRef("uretprobe", "libc", "_ZN3foo3barEv")),
        ("uprobe:libc:memcpy@GLIBC_2.14", ProbeRef("uprobe", "libc", "memcpy@GLIBC_2.14")),
    ],
)
def test_valid_specs_parse(text, expected):
    ref = parse_probe(text)
    assert ref == expected
    assert parse_probe(str(ref)) == ref


@pytest.mark.parametrize(
    "text",
    [
        "", "usdt", "kprobe:do_sys_open", "usdt:/bin/x:a:b:c:d",
        'usdt:/bin/x:prov:na"me', "usdt:/bin/x:prov:name;", "usdt:/bin/x:prov:#include",
        "usdt:/bin/x:prov:name\nint x;", "uprobe:/bin/x:func); system(\"x\"", "uprobe:/bin/x:f+zz",
        "uretprobe:/bin/x:f+4", "usdt:/bin/\x00x:p:n", "uprobe:/bin/x:" + "a" * 2000,
        "usdt:/bin/x:1abc:def", "uprobe:/bin/x:f\u00e9",
    ],
)
def test_hostile_or_malformed_specs_are_refused(text):
    with pytest.raises(UsageError):
        parse_probe(text)


@pytest.mark.parametrize("text", ["arg0", "arg11", "pid", "tid", "comm", "cpu", "retval", "latency"])
def test_fields(text):
    assert str(Field.parse(text)) == text


@pytest.mark.parametrize("text", ["arg12", "arg-1", "args", "x; y", "", "ARG0"])
def test_bad_fields(text):
    with pytest.raises(UsageError):
        Field.parse(text)


def test_linear_histogram_bounds_checked():
    with pytest.raises(UsageError):
        HistSpec(Field("arg", 0), "linear", 10, 5, 1)
    with pytest.raises(UsageError):
        HistSpec(Field("arg", 0), "linear", 0, 10**9, 1)
    with pytest.raises(UsageError):
        HistSpec(Field("arg", 0), "cubic")
