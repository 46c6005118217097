"""The C ABI of usdtkit's libstapsdt (``native/``), bound with ctypes.

The library allocates every provider and probe; Python holds pointers to them and reads the public
prefix of their structs (laid out as the libstapsdt ABI documents).  Lifecycle calls are bound here
rather than through the PyPI ``stapsdt`` package's ``Provider``/``Probe``, which report a successful
load as False, hide the library's error message and pass Python ints as 32-bit C ints.

Two handles on the same library: calls through ``CDLL`` release the GIL (loading writes files),
calls through ``PyDLL`` keep it (unloading must not interleave with a thread firing a probe).
"""
from __future__ import annotations

import ctypes
import os
from typing import Any

from .. import _native
from ..errors import ProviderError

_cdll = _native.load_library()  # must precede `import stapsdt`: it resolves libstapsdt.so by name
_pydll = ctypes.PyDLL(_native.library_path(), mode=os.RTLD_NOW | os.RTLD_GLOBAL)

from stapsdt import ArgTypes  # noqa: E402  (PyPI stapsdt, running unmodified on our library)

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


provider_init = _bind(_cdll, "providerInit", ProviderPtr, ctypes.c_char_p)
provider_use_memfd = _bind(_cdll, "providerUseMemfd", ctypes.c_int, ProviderPtr, ctypes.c_int)
provider_add_probe = _bind(_cdll, "providerAddProbe", ProbePtr, ProviderPtr, ctypes.c_char_p,
                           ctypes.c_int)  # then `argCount` C ints (variadic)
provider_load = _bind(_cdll, "providerLoad", ctypes.c_int, ProviderPtr)
provider_unload = _bind(_pydll, "providerUnload", ctypes.c_int, ProviderPtr)
provider_destroy = _bind(_pydll, "providerDestroy", None, ProviderPtr)
probe_semaphore = _bind(_cdll, "probeSemaphore", ctypes.c_void_p, ProbePtr)


def error_of(handle: Any, what: str) -> ProviderError:
    """The library's message for the last failed call on ``handle``, as a :class:`ProviderError`."""
    message = handle.contents.error if handle else None
    text = message.decode("utf-8", "replace") if message else "unknown error"
    return ProviderError(f"{what}: {text}")
