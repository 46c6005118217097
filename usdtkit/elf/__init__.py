"""Discovery: what can be probed in an ELF file, a library or a running process.  Pure Python, no root.

* :func:`read_usdt_probes` -- USDT probes of ``.note.stapsdt``, every call site with its parsed args.
* :func:`read_functions`, :func:`find_symbol` -- function symbols (``.symtab``, ``.dynsym``, debug files).
* :func:`resolve_target`, :func:`resolve_library` -- a path or library name to an absolute path.
* :func:`process_objects` -- the ELF objects a process has mapped, with their load bias.

Submodules are imported on first use so that importing this package (and starting the CLI) stays cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .model import FunctionSymbol, UsdtProbe
    from .process import MappedObject

__all__ = [
    "read_usdt_probes",
    "read_functions",
    "find_symbol",
    "address_to_offset",
    "resolve_library",
    "resolve_target",
    "process_objects",
    "parse_arg",
    "parse_args",
    "format_arg",
    "format_args",
    "Arg",
    "Constant",
    "FunctionSymbol",
    "MappedObject",
    "Memory",
    "Register",
    "RegisterValue",
    "SymbolRelative",
    "Unsupported",
    "UsdtLocation",
    "UsdtProbe",
]


def read_usdt_probes(path: str) -> "List[UsdtProbe]":
    """Every USDT probe (``provider:name`` with all its call sites) of the ELF file at ``path``."""
    from .notes import read_usdt_probes as _read

    return _read(path)


def read_functions(path: str, pattern: Optional[str] = None, demangle: bool = False) -> "List[FunctionSymbol]":
    """Function symbols of ``path`` whose name matches the glob ``pattern`` (all when None)."""
    from .symbols import read_functions as _read

    return _read(path, pattern, demangle)


def find_symbol(path: str, name: str) -> "FunctionSymbol":
    """The function ``name`` of ``path`` (ProbeNotFound when absent)."""
    from .symbols import find_symbol as _find

    return _find(path, name)


def address_to_offset(path: str, address: int) -> int:
    """The file offset (what a uprobe takes) of link-time ``address`` in ``path``."""
    from .symbols import address_to_offset as _to_offset

    return _to_offset(path, address)


def resolve_library(name: str) -> str:
    """The absolute path the dynamic loader would use for a library name (``c``, ``libstdc++``)."""
    from .targets import resolve_library as _resolve

    return _resolve(name)


def resolve_target(target: str) -> str:
    """An ELF target given as a path or a library name, as an absolute path (TargetError if neither)."""
    from .targets import resolve_target as _resolve

    return _resolve(target)


def process_objects(pid: int) -> "List[MappedObject]":
    """Every ELF object mapped by process ``pid`` (NoSuchProcess if it is gone)."""
    from .process import process_objects as _objects

    return _objects(pid)


_LAZY = {
    "parse_arg": "argspec",
    "parse_args": "argspec",
    "format_arg": "argspec",
    "format_args": "argspec",
    "MappedObject": "process",
    "Mapping": "process",
}
_MODEL_NAMES = frozenset(
    {"Arg", "Constant", "FunctionSymbol", "Location", "Memory", "Register", "RegisterValue",
     "SymbolRelative", "Unsupported", "UsdtLocation", "UsdtProbe"}
)


def __getattr__(name: str) -> Any:
    import importlib

    module = _LAZY.get(name)
    if module is None:
        if name in _MODEL_NAMES:
            from . import model

            return getattr(model, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
