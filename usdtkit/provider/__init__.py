"""Declare USDT probes from Python: any USDT tracer (usdtkit, bpftrace, bcc) can attach to them.

Quick start::

    from usdtkit.provider import Provider, uint8

    app = Provider("myapp")
    request = app.probe("request", int, str, uint8)   # int64, UTF-8 string pointer, uint8
    db = app.span("db_query")                         # db_query_start / db_query_done

    @app.traced()                                     # handle_entry / handle_return
    def handle(req): ...

    app.load()

    if request.enabled:                               # the hot-path idiom: one memory read
        request(req.id, req.path, req.retries)
    with db() as span_id:
        ...

Argument types: ``int`` is int64, ``bool`` is uint8 (0/1), ``str`` (or ``bytes``) is a pointer to a
NUL-terminated UTF-8 string, and :data:`int8`, :data:`uint8`, ... :data:`uint64` are fixed widths
(``stapsdt.ArgTypes`` members).  At most 6 arguments.  Names match ``[A-Za-z_][A-Za-z0-9_]*``, at
most 64 characters.

Firing checks values against the declared types and raises ``TypeError`` (wrong type) or
``ValueError`` (out of range, e.g. 300 for a uint8; a string containing NUL, which a C string cannot
carry) instead of truncating.  ``None`` for a string argument passes a NULL pointer.  Strings longer
than :data:`MAX_STRING_BYTES` bytes of UTF-8 are truncated to that many bytes (at a character
boundary); tracers read far less by default anyway.  Arguments are checked and converted only when
the probe is enabled: a disabled probe costs one attribute read and a compare.

Probes added after :meth:`Provider.load` fire only after the next ``load()``, which then reloads
the provider (tracers attached to the old object must attach again).  Firing is thread-safe;
``unload()``/``close()`` while other threads fire is safe: the probe state is swapped out first and
firing reads it afresh at each step, and whatever Python holds that points into the loaded object
(an ``enabled`` view kept in a variable, a site a fire function is about to call) keeps the object
mapped until it is dropped (:mod:`usdtkit.provider.mapping`), so no use of this API can touch
unmapped memory.  Free-threaded builds are not supported.  A provider loaded before ``os.fork()``
keeps working in the child.  Providers are unloaded at interpreter exit.

The API is built on the PyPI ``stapsdt`` package's ABI binding: its ``ArgTypes`` are the fixed widths
here, and ``import stapsdt`` runs unmodified on our library.  Lifecycle and firing calls are bound
here rather than through ``stapsdt.Provider``/``Probe`` because those report a successful load as
False, hide the library's error message, and pass Python ints as 32-bit C ints (so 64-bit values
would be truncated).  If the native library
is missing or broken, importing this module still works and the first use (``Provider(...)``,
``uint8``...) raises :class:`~usdtkit.errors.ProviderError` naming the library, what is wrong with it
and how to fix it.

A process started by a tracer that waits for its providers (``usdtkit trace -c``, ``trace(command=...)``,
the pytest plugin's ``traced_process``) has a rendezvous in its environment (``USDTKIT_RENDEZVOUS``):
there ``load()`` tells the tracer about the object it loaded and returns once the tracer has attached
(at most ``USDTKIT_RENDEZVOUS_TIMEOUT`` seconds, 5 by default), so the first probe fired is seen.
Elsewhere it never waits (``native/rendezvous.c``, :mod:`usdtkit.tracing.rendezvous`).

Where the object lives: by default a file named by its content in a private runtime directory
(``$XDG_RUNTIME_DIR/usdtkit``, ``/run/user/UID/usdtkit``, ``/run/usdtkit`` for root, else
``/tmp/usdtkit-UID``; ``$USDTKIT_RUNTIME_DIR`` overrides), so every process of a service maps the
same file and one tracer attached by :attr:`Provider.path` sees all of them, including workers
started later.  ``Provider(name, memfd=True)`` keeps the object in a memfd instead (nothing on disk;
attach by PID).  Files no process maps any more are removed: by :meth:`Provider.close` (unless
another process still maps the file), and by any load once a few have accumulated (left by killed
processes, or by definitions no longer loaded anywhere); see ``native/reclaim.c``.
"""
from __future__ import annotations

from typing import Any

from ..errors import ProviderError
from .abi import MAX_ARGS, SDTProbeStruct, SDTProviderStruct, arg_types
from .abi import probe_semaphore as _probe_semaphore
from .args import MAX_NAME_LENGTH, MAX_STRING_BYTES
from .provider import Probe, Provider
from .semaphore import Semaphore
from .spans import Span, SpanScope

__all__ = [
    "ArgTypes",
    "MAX_ARGS",
    "MAX_NAME_LENGTH",
    "MAX_STRING_BYTES",
    "Probe",
    "Provider",
    "Semaphore",
    "Span",
    "SpanScope",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
]

_WIDTHS = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")


def _native_names() -> dict:
    """``ArgTypes`` and the fixed widths: ``stapsdt.ArgTypes`` needs the native library loaded."""
    widths = arg_types()
    return {"ArgTypes": widths, **{name: widths[name] for name in _WIDTHS}}


try:
    globals().update(_native_names())
except ProviderError:  # unusable native library: raised again when one of these names is used
    pass


def __getattr__(name: str) -> Any:
    if name == "ArgTypes" or name in _WIDTHS:
        names = _native_names()  # raises the ProviderError that says what is wrong
        globals().update(names)
        return names[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
