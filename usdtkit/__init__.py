"""usdtkit: USDT and uprobe instrumentation for Linux.

Discover probes in ELF files and processes (:mod:`usdtkit.elf`, pure Python, no root), declare probes
from Python services (:mod:`usdtkit.provider`), and attach uprobes, uretprobes and USDT probes through
bcc to collect counts, histograms, latencies, events and stacks.

This module is the public API; everything else is private to its package.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    AttachError,
    ElfError,
    EnvironmentProblem,
    InstrumentError,
    NoSuchProcess,
    ProbeNotFound,
    ProviderError,
    TargetError,
    UsageError,
    UsdtkitError,
)

# Public names served lazily, so `import usdtkit` (and the CLI's start) stays fast.
_LAZY = {
    "trace": ("usdtkit.tracing.api", "trace"),
    "build_plan": ("usdtkit.tracing.api", "build_plan"),
    "Session": ("usdtkit.tracing.session", "Session"),
    "PyCalls": ("usdtkit.tracing.pycalls", "PyCalls"),
    "TraceRequest": ("usdtkit.plan.request", "TraceRequest"),
    "make_request": ("usdtkit.plan.request", "make_request"),
    "Target": ("usdtkit.plan.request", "Target"),
    "AttachPlan": ("usdtkit.plan.plan", "AttachPlan"),
    "make_plan": ("usdtkit.plan.plan", "make_plan"),
    "HistSpec": ("usdtkit.plan.request", "HistSpec"),
    "Field": ("usdtkit.expr.fields", "Field"),
    "Filter": ("usdtkit.expr.filters", "Filter"),
    "Event": ("usdtkit.collect.results", "Event"),
    "Counts": ("usdtkit.collect.results", "Counts"),
    "Histogram": ("usdtkit.collect.results", "Histogram"),
    "ProbeStats": ("usdtkit.collect.results", "ProbeStats"),
    "UsdtProbe": ("usdtkit.elf.model", "UsdtProbe"),
    "UsdtLocation": ("usdtkit.elf.model", "UsdtLocation"),
    "FunctionSymbol": ("usdtkit.elf.model", "FunctionSymbol"),
    "Arg": ("usdtkit.elf.model", "Arg"),
    "read_usdt_probes": ("usdtkit.elf", "read_usdt_probes"),
    "read_functions": ("usdtkit.elf", "read_functions"),
    "process_objects": ("usdtkit.elf", "process_objects"),
    "resolve_target": ("usdtkit.elf", "resolve_target"),
}


def __getattr__(name: str) -> object:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'usdtkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value


def __dir__() -> "list[str]":
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "__version__",
    *_LAZY,
    "AttachError",
    "ElfError",
    "EnvironmentProblem",
    "InstrumentError",
    "NoSuchProcess",
    "ProbeNotFound",
    "ProviderError",
    "TargetError",
    "UsageError",
    "UsdtkitError",
]


class _StapsdtPreload:
    """Loads usdtkit's libstapsdt.so just before the PyPI ``stapsdt`` module is first imported.

    ``stapsdt`` loads "libstapsdt.so" by bare name at import, and glibc answers a bare name with an
    already loaded object of that SONAME: opening ours first (absolute path, ``RTLD_GLOBAL``) makes the
    unmodified package run on it.  Loading it only then, rather than at ``import usdtkit``, spares every
    other use of usdtkit (the CLI, discovery) the ctypes import and the dlopen.  A missing or broken build
    is not an error here: ``usdtkit.provider`` raises the ProviderError that says how to fix it.
    """

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "stapsdt":
            from ._native import load_library

            try:
                load_library()
            except ProviderError:
                pass
        return None  # the usual finders import the module itself


import sys as _sys

if not any(isinstance(f, type) and f.__name__ == "_StapsdtPreload" for f in _sys.meta_path):
    _sys.meta_path.insert(0, _StapsdtPreload)  # type: ignore[arg-type]
del _sys

_LAZY.update(
    {
        "Provider": ("usdtkit.provider", "Provider"),
        "Probe": ("usdtkit.provider", "Probe"),
        "Span": ("usdtkit.provider", "Span"),
    }
)
__all__ += ["Provider", "Probe", "Span"]
