"""The C ABI of usdtkit's libstapsdt (``native/``), bound with ctypes.

The library allocates every provider and probe; Python holds pointers to them and reads the public
prefix of their structs (laid out as the libstapsdt ABI documents).  Lifecycle calls are bound here
rather than through the PyPI ``stapsdt`` package's ``Provider``/``Probe``, which report a successful
load as False, hide the library's error message and pass Python ints as 32-bit C ints.

Every call releases the GIL: loading writes a file and closing may read every process's memory
map (to tell whether the file is still in use), and neither touches Python objects.  Calls on one
provider are serialised by its lock; firing never calls the library (see :mod:`.mapping`).
"""
from __future__ import annotations

import ctypes
import threading
from typing import TYPE_CHECKING, Any, Optional

from .. import _native
from ..errors import ProviderError

if TYPE_CHECKING:
    from stapsdt import ArgTypes

MAX_ARGS = 6  # MAX_ARGUMENTS in libstapsdt.h: the six SysV integer argument registers


class SDTProbeStruct(ctypes.Structure):
    """``SDTProbe_t`` as laid out by the libstapsdt ABI."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("argFmt", ctypes.c_int * MAX_ARGS),
        ("_fire", ctypes.c_void_p),
        ("provider", ctypes.c_void_p),
        ("argCount", ctypes.c_int),
    ]


class SDTProviderStruct(ctypes.Structure):
    """``SDTProvider_t`` as laid out by the libstapsdt ABI."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("probes", ctypes.c_void_p),
        ("errno", ctypes.c_int),
        ("error", ctypes.c_char_p),
        ("_handle", ctypes.c_void_p),
        ("_filename", ctypes.c_char_p),
        ("_memfd", ctypes.c_int),
        ("_use_memfd", ctypes.c_int),
    ]


ProviderPtr = ctypes.POINTER(SDTProviderStruct)
ProbePtr = ctypes.POINTER(SDTProbeStruct)


def _bind(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


class Library:
    """The bound functions of the loaded library."""

    def __init__(self, cdll: ctypes.CDLL) -> None:
        self.provider_init = _bind(cdll, "providerInit", ProviderPtr, ctypes.c_char_p)
        self.provider_use_memfd = _bind(cdll, "providerUseMemfd", ctypes.c_int, ProviderPtr, ctypes.c_int)
        self.provider_add_probe = _bind(cdll, "providerAddProbe", ProbePtr, ProviderPtr, ctypes.c_char_p,
                                        ctypes.c_int)  # then `argCount` C ints (variadic)
        self.provider_load = _bind(cdll, "providerLoad", ctypes.c_int, ProviderPtr)
        self.provider_unload = _bind(cdll, "providerUnload", ctypes.c_int, ProviderPtr)
        self.provider_destroy = _bind(cdll, "providerDestroy", None, ProviderPtr)
        self.probe_semaphore = _bind(cdll, "probeSemaphore", ctypes.c_void_p, ProbePtr)


_lock = threading.Lock()
_library: Optional[Library] = None


def library() -> Library:
    """The library, loaded and bound on first use.  A missing or broken build raises
    :class:`ProviderError` here, when the provider API is used, not when it is imported."""
    global _library
    if _library is None:
        with _lock:
            if _library is None:
                _library = Library(_native.load_library())
    return _library


def arg_types() -> "type[ArgTypes]":
    """``stapsdt.ArgTypes``: the PyPI package loads ``libstapsdt.so`` by name at import, so it
    runs on our library only once that is loaded."""
    library()
    try:
        from stapsdt import ArgTypes
    except ImportError as exc:
        raise ProviderError(f"the stapsdt package cannot be imported ({exc}); "
                            "install it with `pip install stapsdt`") from exc
    return ArgTypes


def probe_semaphore(probe: Any) -> Optional[int]:
    """Address of a loaded probe's semaphore (``probeSemaphore``), None if not loaded."""
    return library().probe_semaphore(probe)


def error_of(handle: Any, what: str) -> ProviderError:
    """The library's message for the last failed call on ``handle``, as a :class:`ProviderError`."""
    message = handle.contents.error if handle else None
    text = message.decode("utf-8", "replace") if message else "unknown error"
    return ProviderError(f"{what}: {text}")
