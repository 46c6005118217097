"""What a probe spec names: the USDT probes and function symbols it matches.

An exact spec names one probe (``hello:tick``) or one function; a pattern (:attr:`ProbeRef.is_pattern`)
names every probe or function its globs match, with the glob language of ``usdtkit list``
(:mod:`usdtkit.elf.glob`), so a listing and a trace of one pattern show the same probes.

A function is where a uprobe goes, and several symbols often name one address: glibc's ``malloc`` is
also ``__libc_malloc``, ``__malloc`` and ``__GI___libc_malloc``, a C++ constructor has a complete and a
base object symbol.  A pattern therefore stands for one probe per address (two uprobes on one
instruction would count every call twice), named after the symbol a person would use: the fewest
leading underscores (``nanosleep``, a weak alias, rather than the global ``__nanosleep``), then global
before weak before local, then the shortest.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Dict, Iterable, List

from ..elf.glob import compile_glob, demangled_matcher
from ..elf.model import FunctionSymbol, UsdtProbe
from .refs import ProbeRef

_BINDING_RANK = {"GLOBAL": 0, "WEAK": 1, "GNU_UNIQUE": 1}


def _name_matcher(pattern: str, exact: bool) -> Callable[[str], bool]:
    if exact:
        return pattern.__eq__
    match = compile_glob(pattern)
    return (lambda text: True) if match is None else (lambda text: bool(match(text)))


def usdt_matcher(ref: ProbeRef) -> Callable[[UsdtProbe], bool]:
    """Whether a USDT probe is one ``ref`` names (any provider when the spec gives none)."""
    exact = not ref.is_pattern
    name = _name_matcher(ref.name, exact)
    if ref.provider is None:
        return lambda probe: name(probe.name)
    provider = _name_matcher(ref.provider, exact)
    return lambda probe: name(probe.name) and provider(probe.provider)


def names_provider(ref: ProbeRef, provider: str) -> bool:
    """Whether a USDT spec can name probes of ``provider`` (any provider when it gives none)."""
    return ref.provider is None or _name_matcher(ref.provider, not ref.is_pattern)(provider)


def function_label(function: FunctionSymbol) -> str:
    """The name a matched function goes by in results: its demangled name where it has one."""
    return function.demangled or function.name


def function_labels(functions: List[FunctionSymbol]) -> List[str]:
    """Distinct names for matched functions (at distinct addresses).  Where two go by one name (a C++
    deleting and complete destructor, ``static`` functions of two files), the symbol, then the address,
    tells them apart: ``Cache::~Cache() [_ZN5CacheD0Ev]``, ``free_mem [0x9a2b0]``."""
    labels = [function_label(f) for f in functions]
    for tell in (lambda f: f.name, lambda f: f"{f.address:#x}"):
        repeated = {label for label, n in Counter(labels).items() if n > 1}
        labels = [f"{label} [{tell(f)}]" if label in repeated and tell(f) != label else label
                  for label, f in zip(labels, functions)]
    return labels


def _preference(function: FunctionSymbol) -> tuple:
    name = function.name
    return (len(name) - len(name.lstrip("_")), _BINDING_RANK.get(function.binding, 2), len(name), name)


def matching_functions(ref: ProbeRef, functions: Iterable[FunctionSymbol]) -> List[FunctionSymbol]:
    """The functions a pattern ``ref`` matches, one per address, sorted by the name they go by.

    ``functions`` carry their demangled names when ``ref`` names C++ functions (``ref.cpp``)."""
    if ref.cpp:
        match = demangled_matcher(ref.name, exact=ref.literal)
        chosen = [f for f in functions if match(f.name, f.demangled)]
    else:
        name = _name_matcher(ref.name, False)
        chosen = [f for f in functions if name(f.name)]
    by_address: Dict[int, FunctionSymbol] = {}
    for function in chosen:
        known = by_address.get(function.address)
        if known is None or _preference(function) < _preference(known):
            by_address[function.address] = function
    return sorted(by_address.values(), key=lambda f: (function_label(f), f.address))
