"""C++ demangling: ``_ZN7Threads6createEv`` -> ``Threads::create()``.

C++ compilers encode namespaces, classes and parameter types into symbol names (the Itanium ABI
"mangling", names starting with ``_Z``).  Demangling is done in bulk by one ``c++filt`` process (fast:
one pipe round trip for tens of thousands of names), or, without binutils, through
``__cxa_demangle`` of libstdc++ via ctypes.  Without either, names stay mangled.
"""
from __future__ import annotations

import shutil
import subprocess
from typing import Dict, Iterable, List, Optional


def demangle_names(names: Iterable[str]) -> Dict[str, str]:
    """Demangled form of each mangled name in ``names`` (names that do not demangle are left out)."""
    mangled = sorted({n for n in names if n.startswith("_Z") and "\n" not in n})
    if not mangled:
        return {}
    result = _with_cxxfilt(mangled)
    if result is None:
        result = _with_libstdcxx(mangled)
    if result is None:
        return {}
    return {m: d for m, d in zip(mangled, result) if d and d != m}


def _with_cxxfilt(mangled: List[str]) -> Optional[List[str]]:
    exe = shutil.which("c++filt")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe], input="\n".join(mangled) + "\n", capture_output=True, text=True, timeout=60,
            errors="surrogateescape", check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.split("\n")
    if proc.returncode != 0 or len(lines) < len(mangled):
        return None
    return lines[: len(mangled)]


def _with_libstdcxx(mangled: List[str]) -> Optional[List[str]]:
    import ctypes
    import ctypes.util

    try:
        lib = ctypes.CDLL(ctypes.util.find_library("stdc++") or "libstdc++.so.6")
        libc = ctypes.CDLL(None)
        demangle = lib.__cxa_demangle
    except (OSError, AttributeError):
        return None
    demangle.restype = ctypes.c_void_p
    demangle.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    libc.free.argtypes = [ctypes.c_void_p]
    out = []
    status = ctypes.c_int()
    for name in mangled:
        ptr = demangle(name.encode("utf-8", "surrogateescape"), None, None, ctypes.byref(status))
        if not ptr or status.value != 0:
            out.append("")
            continue
        out.append(ctypes.string_at(ptr).decode("utf-8", "surrogateescape"))
        libc.free(ptr)
    return out
