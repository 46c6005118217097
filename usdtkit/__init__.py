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

from typing import Any

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


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'usdtkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value


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

# Preload usdtkit's libstapsdt.so with RTLD_GLOBAL so that the PyPI `stapsdt` package, which loads
# "libstapsdt.so" by bare name, finds it (glibc matches the SONAME of loaded objects).  A missing or
# broken build must not break the parts of usdtkit that do not need it: usdtkit.provider raises the
# same ProviderError, saying what is wrong and how to fix it, when the provider API is used.
try:
    from ._native import load_library as _load_native_library

    _load_native_library()
except ProviderError:
    pass

_LAZY.update(
    {
        "Provider": ("usdtkit.provider", "Provider"),
        "Probe": ("usdtkit.provider", "Probe"),
        "Span": ("usdtkit.provider", "Span"),
    }
)
__all__ += ["Provider", "Probe", "Span"]
