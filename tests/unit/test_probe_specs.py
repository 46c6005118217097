"""Probe specs and filters: bpftrace syntax parsed into typed values, hostile text refused early."""
from __future__ import annotations

import re

import pytest

from usdtkit.elf.glob import without_parameters
from usdtkit.elf.model import FunctionSymbol, UsdtProbe
from usdtkit.errors import ProbeNotFound, UsageError
from usdtkit.plan.matching import function_labels, matching_functions, usdt_matcher
from usdtkit.plan.plan import make_plan
from usdtkit.plan.refs import ProbeRef, parse_probe
from usdtkit.expr.fields import Field
from usdtkit.plan.request import HistSpec, make_request


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


@pytest.mark.parametrize(
    "text, expected",
    [
        ("usdt:/bin/app:hello:*", ProbeRef("usdt", "/bin/app", "*", "hello")),
        ("usdt:/bin/app:*:*__start", ProbeRef("usdt", "/bin/app", "*__start", "*")),
        ("usdt::p?ov:[a-c]*", ProbeRef("usdt", "", "[a-c]*", "p?ov")),
        ("usdt:/bin/app:*", ProbeRef("usdt", "/bin/app", "*")),
        ("uprobe:libc:mall*", ProbeRef("uprobe", "libc", "mall*")),
        ("uretprobe:libc:str[!c]?", ProbeRef("uretprobe", "libc", "str[!c]?")),
        ("uprobe:/bin/app:cpp:std::vector*", ProbeRef("uprobe", "/bin/app", "std::vector*", cpp=True)),
        ('uprobe:/bin/app:cpp:"ns::f(int, char*) const"',
         ProbeRef("uprobe", "/bin/app", "ns::f(int, char*) const", cpp=True, literal=True)),
        ("uprobe:/bin/app:ns::Cache::get", ProbeRef("uprobe", "/bin/app", "ns::Cache::get", cpp=True)),
        ('uretprobe:/bin/app:"ns::operator<<(int)"',
         ProbeRef("uretprobe", "/bin/app", "ns::operator<<(int)", cpp=True, literal=True)),
        ("uprobe:/bin/app:cpp:main", ProbeRef("uprobe", "/bin/app", "main", cpp=True)),
    ],
)
def test_patterns_parse_and_print_back(text, expected):
    ref = parse_probe(text)
    assert ref == expected and ref.is_pattern
    assert parse_probe(str(ref)) == ref


def test_exact_specs_are_not_patterns():
    assert not any(parse_probe(text).is_pattern for text in (
        "usdt:/bin/app:hello:tick", "uprobe:libc:malloc", 'uprobe:libc:"malloc"', "uprobe:/bin/app:0x1139"))
    assert parse_probe('uprobe:libc:"malloc"') == ProbeRef("uprobe", "libc", "malloc")


@pytest.mark.parametrize(
    "text, words",
    [
        ("uprobe:libc:mall*+4", "an offset applies to one function"),
        ("uprobe:libc:mall*@GLIBC_2.2.5", "without their @VERSION"),
        ("usdt:/bin/x:pro;v:*", "not a valid provider or probe name"),
        ("usdt:/bin/x:hello:ti*ck'", "not a valid provider or probe name"),
        ('uprobe:/bin/x:cpp:"ns::f(int)', "not a valid C++ function name"),
        ('uprobe:/bin/x:cpp:ns::"f"', "not a valid C++ function name"),
        ("uprobe:/bin/x:cpp:ns::f\\g", "not a valid C++ function name"),
        ("uprobe:/bin/x:cpp:", "not a valid C++ function name"),
        ("uprobe:/bin/x:cpp:" + "a" * 5000, "not a valid C++ function name"),
        ("uprobe:/bin/x:cpp:ns::f\x1b[2J", "control characters"),
        ("uprobe:/bin/x:ns::f\nint x;", "control characters"),
        ('uprobe:/bin/x:"mall*"', "not a valid function name"),
    ],
)
def test_malformed_patterns_get_one_clear_error(text, words):
    with pytest.raises(UsageError, match=re.escape(words)) as caught:
        parse_probe(text)
    assert "\n" not in str(caught.value)


def _probe(provider: str, name: str) -> UsdtProbe:
    return UsdtProbe(provider, name, "/bin/app")


@pytest.mark.parametrize("spec, names", [
    ("usdt:/bin/app:hello:*", ["hello:greet", "hello:request__start", "hello:tick"]),
    ("usdt:/bin/app:*:*__start", ["db:query__start", "hello:request__start"]),
    ("usdt:/bin/app:*__start", ["db:query__start", "hello:request__start"]),
    ("usdt:/bin/app:hello:t?ck", ["hello:tick"]),
    ("usdt:/bin/app:[dh]*:*e*t", ["db:query__start", "hello:greet", "hello:request__start"]),
    ("usdt:/bin/app:Hello:*", []),  # case-sensitive
    ("usdt:/bin/app:hello:tick", ["hello:tick"]),
])
def test_usdt_patterns_match_provider_and_name(spec, names):
    probes = [_probe("hello", "greet"), _probe("hello", "tick"), _probe("hello", "request__start"),
              _probe("db", "query__start"), _probe("db", "query__done")]
    wanted = usdt_matcher(parse_probe(spec))
    assert sorted(p.qualified_name for p in probes if wanted(p)) == names


def _function(name: str, address: int, binding: str = "GLOBAL", demangled=None) -> FunctionSymbol:
    return FunctionSymbol(name, address, 16, address, binding, "/bin/app", demangled=demangled)


def test_a_function_pattern_names_each_address_once_by_its_plainest_name():
    functions = [_function("__GI___libc_malloc", 0x100, "LOCAL"), _function("__libc_malloc", 0x100),
                 _function("malloc", 0x100), _function("__malloc", 0x100, "LOCAL"),
                 _function("malloc_trim", 0x300, "WEAK"), _function("_int_malloc", 0x200, "LOCAL"),
                 _function("free", 0x400), _function("__nanosleep", 0x500), _function("nanosleep", 0x500, "WEAK")]
    chosen = matching_functions(parse_probe("uprobe:/bin/app:*malloc*"), functions)
    assert [(f.name, f.address) for f in chosen] == [("_int_malloc", 0x200), ("malloc", 0x100),
                                                     ("malloc_trim", 0x300)]
    assert [f.name for f in matching_functions(parse_probe("uprobe:/bin/app:mall*"), functions)] == [
        "malloc", "malloc_trim"]
    assert [f.name for f in matching_functions(parse_probe("uprobe:/bin/app:*sleep"), functions)] == ["nanosleep"]


@pytest.mark.parametrize("spec, names", [
    ("uprobe:/bin/app:cpp:shapes::scale", ["shapes::scale(long)", "shapes::scale(long, long)"]),
    ("uprobe:/bin/app:shapes::scale", ["shapes::scale(long)", "shapes::scale(long, long)"]),
    ("uprobe:/bin/app:cpp:shapes::scale(long, *", ["shapes::scale(long, long)"]),
    ('uprobe:/bin/app:cpp:"shapes::scale(long)"', ["shapes::scale(long)"]),
    ('uprobe:/bin/app:cpp:"shapes::scale(*)"', []),  # quoted: no glob
    ("uprobe:/bin/app:cpp:shapes::Circle::*", ["shapes::Circle::Circle(long)", "shapes::Circle::area() const"]),
    ("uprobe:/bin/app:cpp:*::operator()(int*", ["shapes::Less::operator()(int, int) const"]),
    ("uprobe:/bin/app:cpp:main", ["main"]),
    ("uprobe:/bin/app:cpp:*area", ["shapes::Circle::area() const"]),
])
def test_cpp_patterns_match_demangled_names_with_or_without_parameters(spec, names):
    functions = [
        _function("_ZN6shapes5scaleEl", 0x10, demangled="shapes::scale(long)"),
        _function("_ZN6shapes5scaleEll", 0x20, demangled="shapes::scale(long, long)"),
        _function("_ZN6shapes6CircleC1El", 0x30, "WEAK", demangled="shapes::Circle::Circle(long)"),
        _function("_ZN6shapes6CircleC2El", 0x30, "WEAK", demangled="shapes::Circle::Circle(long)"),
        _function("_ZNK6shapes6Circle4areaEv", 0x40, "WEAK", demangled="shapes::Circle::area() const"),
        _function("_ZNK6shapes4LessclEii", 0x50, demangled="shapes::Less::operator()(int, int) const"),
        _function("main", 0x60),
    ]
    assert [f.demangled or f.name for f in matching_functions(parse_probe(spec), functions)] == names


def test_matched_functions_that_go_by_one_name_are_told_apart():
    functions = [_function("free_mem", 0x10, "LOCAL"), _function("free_mem", 0x20, "LOCAL"),
                 _function("_ZN5CacheD0Ev", 0x30, demangled="Cache::~Cache()"),
                 _function("_ZN5CacheD1Ev", 0x40, demangled="Cache::~Cache()"), _function("main", 0x50)]
    assert function_labels(functions) == ["free_mem [0x10]", "free_mem [0x20]", "Cache::~Cache() [_ZN5CacheD0Ev]",
                                          "Cache::~Cache() [_ZN5CacheD1Ev]", "main"]


@pytest.mark.parametrize("demangled, name", [
    ("ns::f(int)", "ns::f"),
    ("ns::Cache::get(int) const", "ns::Cache::get"),
    ("ns::Less::operator()(int, int) const", "ns::Less::operator()"),
    ("apply(int (*)(int), int)", "apply"),
    ("std::function<void ()>::operator()() const", "std::function<void ()>::operator()"),
    ("no_parameters", "no_parameters"),
])
def test_the_parameter_list_is_the_last_balanced_group(demangled, name):
    assert without_parameters(demangled) == name


def test_function_latency_of_a_pattern_times_every_match_and_pairs_take_exact_names():
    request = make_request(["uprobe:libc:mall*"], latency=True, events=False)
    assert [str(ref) for ref in request.probes] == ["uprobe:libc:mall*", "uretprobe:libc:mall*"]
    with pytest.raises(UsageError, match="take exact names, not patterns"):
        make_request(["usdt:/bin/app:db:*__start", "usdt:/bin/app:db:query__done"], latency=True, events=False)


def test_function_latency_expands_entry_and_return_in_the_same_order():
    plan = make_plan(make_request(["uprobe:libc:mall*"], latency=True, events=False))
    try:
        entries = [p for p in plan.probes if not p.ref.is_return]
        returns = [p for p in plan.probes if p.ref.is_return]
        assert len(entries) == len(returns) > 2
        assert [p.sites[0].pc for p in entries] == [p.sites[0].pc for p in returns]
        assert [plan.labels()[i] for i in plan.handler_indexes()] == [p.name for p in returns]
    finally:
        plan.close()


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "9"])
def test_max_probes_is_a_positive_number(value):
    with pytest.raises(UsageError, match="max_probes"):
        make_request(["uprobe:libc:mall*"], max_probes=value)


def test_a_match_larger_than_the_limit_is_refused_with_the_way_out():
    with pytest.raises(UsageError) as caught:
        make_plan(make_request(["uprobe:libc:*"], events=False))
    message = str(caught.value)
    count = int(message.split(" match ")[1].split()[0])
    assert count > 512 and message == (
        f"uprobe:libc:* match {count} probes, more than the limit of 512: to attach them all, pass "
        f"--max-probes {count} (max_probes={count} in Python)")
    plan = make_plan(make_request(["uprobe:libc:*"], events=False, max_probes=count))
    plan.close()


def test_two_patterns_naming_one_probe_attach_it_once():
    plan = make_plan(make_request(["uprobe:libc:mall*", "uprobe:libc:malloc", "uprobe:libc:__libc_malloc"],
                                  events=False))
    try:
        places = [site.place for probe in plan.probes for site in probe.sites]
        assert len(places) == len(set(places))
        assert plan.labels().count("malloc") == 1 and "__libc_malloc" not in plan.labels()
    finally:
        plan.close()


def test_a_pattern_that_matches_nothing_names_itself():
    with pytest.raises(ProbeNotFound, match=r"libc: no function matches mallocc\* \(did you mean malloc"):
        make_plan(make_request(["uprobe:libc:mallocc*"], events=False))


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
