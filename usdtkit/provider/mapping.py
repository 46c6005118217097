"""Keeping a loaded object mapped while Python can still reach into it.

A loaded provider is a small ELF object mapped by ``dlopen()``.  Its probe sites (called to fire)
and semaphores (read by ``probe.enabled``) are addresses inside that mapping, and Python code can
hold on to them: a view stored in a variable, a fire function that has read its site's address
when a profiler hook or another thread closes the provider, a daemon thread still running at
interpreter exit.  Touching such an address after ``dlclose()`` unmapped the object kills the
interpreter with SIGSEGV.

So everything handed to Python that points into the object (semaphore views, site addresses, call
prototypes) references a :class:`Mapping`, which holds its own ``dlopen()`` reference on the object.
glibc counts references, so the library's ``dlclose()`` at unload only decrements the count, and
the object is unmapped when the last Python reference to its :class:`Mapping` goes.  Until then a
kept view reads the old object's semaphore and a late call runs the old NOP site: both harmless.

In memfd mode glibc knows the object by the name ``/proc/self/fd/N``.  Were the memfd closed while
the object stays mapped, a later load could get the same descriptor number and glibc would return
the old object for that name; so from unload on the mapping owns the memfd and closes it after its
own ``dlclose()``.
"""
from __future__ import annotations

import ctypes
import os
import weakref
from typing import Any, Callable, List

from ..errors import ProviderError
from .semaphore import Semaphore

# Called with the GIL held (PyDLL): the final dlclose() must not interleave with Python code.
_libc = ctypes.PyDLL(None)
_dlopen = _libc.dlopen
_dlopen.restype = ctypes.c_void_p
_dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
_dlclose = _libc.dlclose
_dlclose.restype = ctypes.c_int
_dlclose.argtypes = [ctypes.c_void_p]

# Probe functions are called through a prototype without argtypes: ctypes then passes a Python
# int as a C int (libffi sign-extends it into the 64-bit register), bytes as a pointer to their
# buffer and None as NULL, with none of the per-argument conversion objects argtypes would create
# (about 85 ns per argument).  Values are range-checked beforehand, so a C int carries any 1-, 2- or
# 4-byte argument exactly (the tracer reads only the low bytes); 8-byte arguments outside the C int
# range are boxed in c_int64/c_uint64.  PYFUNCTYPE: the GIL stays held during the call (the site is a
# NOP, or a uprobe handled synchronously by the kernel), which is cheaper than releasing it.
SITE_PROTOTYPE = ctypes.PYFUNCTYPE(None)


class SiteAddress(int):
    """A probe site's address (what the C fast path calls) that keeps its object mapped."""

    mapping: "Mapping"


def _release(handle: int, memfd: List[int]) -> None:
    _dlclose(handle)
    if memfd[0] >= 0:
        os.close(memfd[0])


class Mapping:
    """One ``dlopen()`` reference on a loaded object, dropped when nothing references this."""

    __slots__ = ("_memfd", "__weakref__")

    def __init__(self, provider: Any) -> None:
        """Take a reference on the object the library just loaded for ``provider`` (an
        ``SDTProvider_t`` pointer): ``RTLD_NOLOAD`` finds it by the name it was loaded by."""
        fields = provider.contents
        handle = _dlopen(fields._filename, os.RTLD_NOW | os.RTLD_NOLOAD) if fields._filename else None
        if not handle or handle != fields._handle:
            if handle:
                _dlclose(handle)
            raise ProviderError(f"provider {fields.name.decode()!r}: cannot reference the loaded "
                                f"object {fields._filename!r}")
        self._memfd = [-1]
        finalizer = weakref.finalize(self, _release, handle, self._memfd)
        finalizer.atexit = False  # the process is ending: a daemon thread may still read a view

    def adopt_memfd(self, provider: Any) -> None:
        """Before the library unloads ``provider``: take over its memfd (see the module doc)."""
        fields = provider.contents
        if fields._memfd >= 0:
            self._memfd[0], fields._memfd = fields._memfd, -1

    def semaphore(self, address: int) -> Semaphore:
        view = Semaphore.from_address(address)
        view.mapping = self
        return view

    def site(self, address: int) -> SiteAddress:
        site = SiteAddress(address)
        site.mapping = self
        return site

    def call(self, address: int) -> Callable[..., None]:
        call = SITE_PROTOTYPE(address)
        call.mapping = self  # type: ignore[attr-defined]
        return call
