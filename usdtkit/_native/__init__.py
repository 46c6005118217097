"""Locate and preload usdtkit's own ``libstapsdt.so`` (built from ``native/``).

The library's SONAME is ``libstapsdt.so``.  When a process has already loaded an object with that
SONAME, glibc's ``dlopen("libstapsdt.so")`` returns it instead of searching the library path.  So
:func:`load_library` opens our copy by absolute path with ``RTLD_GLOBAL``, and afterwards the PyPI
``stapsdt`` package, which does ``cdll.LoadLibrary("libstapsdt.so")`` at import, gets our library
without anything installed system-wide and without ``LD_LIBRARY_PATH``.

Caveat: if ``stapsdt`` was imported before usdtkit and a system ``libstapsdt.so`` exists, that
module keeps the system library; import usdtkit first.
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Optional

LIBRARY_NAME = "libstapsdt.so"

# The ABI functions usdtkit calls, its own extensions included: a library lacking one is another
# libstapsdt, or a build older than this package.
REQUIRED_SYMBOLS = ("providerInit", "providerUseMemfd", "providerAddProbe", "providerLoad",
                    "providerUnload", "providerDestroy", "probeFire", "probeIsEnabled",
                    "probeSemaphore", "providerElfImage", "providerFreeImage")

HOW_TO_FIX = ("rebuild it with `pip install -e .` in the usdtkit source tree (or `./dev.sh setup`), "
              "or reinstall the usdtkit package; the build needs gcc")

_lock = threading.Lock()
_library: Optional[ctypes.CDLL] = None


def library_path() -> str:
    """Absolute path of the bundled ``libstapsdt.so`` (it may not exist if the build was skipped)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def load_library() -> ctypes.CDLL:
    """Load the bundled library once, globally, and return it.

    Raises :class:`usdtkit.errors.ProviderError`, saying what is wrong and how to fix it, if the
    library is missing, cannot be loaded or is not usdtkit's build.
    """
    global _library
    if _library is not None:
        return _library
    with _lock:
        if _library is None:
            _library = _open_checked(library_path())
    return _library


def _open_checked(path: str) -> ctypes.CDLL:
    from ..errors import ProviderError

    if not os.path.exists(path):
        raise ProviderError(f"usdtkit's native library {path} is missing; {HOW_TO_FIX}")
    try:
        library = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    except OSError as exc:
        reason = str(exc)
        if reason.startswith(f"{path}: "):  # dlerror() repeats the path
            reason = reason[len(path) + 2:]
        raise ProviderError(f"usdtkit's native library {path} cannot be loaded ({reason}); "
                            f"{HOW_TO_FIX}") from exc
    missing = [name for name in REQUIRED_SYMBOLS if not hasattr(library, name)]
    if missing:
        raise ProviderError(f"{path} is not usdtkit's build of libstapsdt (it lacks "
                            f"{', '.join(missing)}); {HOW_TO_FIX}")
    return library
