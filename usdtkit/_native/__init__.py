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

_lock = threading.Lock()
_library: Optional[ctypes.CDLL] = None


def library_path() -> str:
    """Absolute path of the bundled ``libstapsdt.so`` (it may not exist if the build was skipped)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def load_library() -> ctypes.CDLL:
    """Load the bundled library once, globally, and return it.

    Raises :class:`usdtkit.errors.ProviderError` if the library was not built or cannot be loaded.
    """
    global _library
    if _library is not None:
        return _library
    with _lock:
        if _library is None:
            from ..errors import ProviderError

            path = library_path()
            if not os.path.exists(path):
                raise ProviderError(
                    f"{path}: native library not built "
                    "(run `pip install -e .` or `python setup.py build_ext --inplace`)"
                )
            try:
                _library = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
            except OSError as exc:
                raise ProviderError(f"{path}: cannot load native library: {exc}") from exc
    return _library
