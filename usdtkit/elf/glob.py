"""Name patterns: one glob language for ``usdtkit list PATTERN`` and wildcard probe specs.

Patterns are shell globs with :mod:`fnmatch` semantics, case-sensitive: ``*`` matches any run of
characters, ``?`` one character, ``[abc]``/``[a-z]``/``[!a]`` one character of (or not of) a set.

A C++ function is matched by its demangled name (``ns::Cache::get(int) const``).  As in bpftrace, the
parameter list takes part only when the pattern has a ``(``: ``ns::Cache::get`` and ``ns::Cache::g*``
match every overload, ``ns::Cache::get(int)*`` only that one.  The parameter list is the last balanced
``(...)`` group: ``operator()(int)`` names ``operator()``, ``f(int (*)(int)) const`` names ``f``.
"""
from __future__ import annotations

import re
from fnmatch import translate
from typing import Callable, Optional

NameFilter = Optional[Callable[[str], object]]
GLOB_CHARACTERS = "*?["


def compile_glob(pattern: Optional[str]) -> NameFilter:
    """A fast case-sensitive matcher for an fnmatch glob (None matches everything)."""
    if pattern is None or pattern == "*":
        return None
    return re.compile(translate(pattern)).match


def has_glob(text: str) -> bool:
    """Whether ``text`` holds a glob character (else it names exactly one thing)."""
    return any(c in text for c in GLOB_CHARACTERS)


def without_parameters(demangled: str) -> str:
    """``demangled`` without its parameter list and what follows it (``const``, ``&&``)."""
    close = demangled.rfind(")")
    depth = 0
    for at in range(close, -1, -1):
        depth += {")": 1, "(": -1}.get(demangled[at], 0)
        if depth == 0:
            return demangled[:at]
    return demangled


def demangled_matcher(pattern: Optional[str], exact: bool = False) -> Callable[[str, Optional[str]], bool]:
    """``match(name, demangled)``: whether a function symbol matches ``pattern`` by its own name or by
    its demangled one (None when it does not demangle).  ``exact`` takes the pattern as a plain name."""
    if pattern is None:
        return lambda name, demangled: True
    match = (lambda text: text == pattern) if exact else compile_glob(pattern)
    if match is None:
        return lambda name, demangled: True
    whole = "(" in pattern

    def matches(name: str, demangled: Optional[str]) -> bool:
        if match(name):
            return True
        if demangled is None:
            return False
        return bool(match(demangled if whole else without_parameters(demangled)))

    return matches
