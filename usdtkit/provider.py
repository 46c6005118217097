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
``unload()``/``close()`` while other threads fire is safe in CPython with the GIL (the probe state is
swapped out before the object is unmapped, firing reads it afresh at each step, and both the probe
call and the unmapping run with the GIL held); free-threaded builds are not supported.  A provider
loaded before ``os.fork()`` keeps working in the child.  Providers are unloaded at interpreter exit.

The API is built on the PyPI ``stapsdt`` package's ABI binding: its ``ArgTypes`` are the fixed widths
here, and ``import stapsdt`` runs unmodified on our library.  Lifecycle and firing calls are bound
here rather than through ``stapsdt.Provider``/``Probe`` because those report a successful load as
False, hide the library's error message, and pass Python ints as 32-bit C ints (so 64-bit values
would be truncated); unloading must also run with the GIL held (see above).

Where the object lives: by default a file named by its content in a private runtime directory
(``$XDG_RUNTIME_DIR/usdtkit``, ``/run/user/UID/usdtkit``, ``/run/usdtkit`` for root, else
``/tmp/usdtkit-UID``; ``$USDTKIT_RUNTIME_DIR`` overrides), so every process of a service maps the
same file and one tracer attached by :attr:`Provider.path` sees all of them, including workers
started later.  ``Provider(name, memfd=True)`` keeps the object in a memfd instead (nothing on disk;
attach by PID).
"""
from __future__ import annotations

import ctypes
import functools
import inspect
import itertools
import keyword
import os
import re
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

from . import _native
from .errors import ProviderError

_cdll = _native.load_library()  # must precede `import stapsdt`: it resolves libstapsdt.so by name
# The same object, called without releasing the GIL (see Provider.unload).
_pydll = ctypes.PyDLL(_native.library_path(), mode=os.RTLD_NOW | os.RTLD_GLOBAL)

from stapsdt import ArgTypes  # noqa: E402  (PyPI stapsdt, running unmodified on our library)

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

uint8 = ArgTypes.uint8
int8 = ArgTypes.int8
uint16 = ArgTypes.uint16
int16 = ArgTypes.int16
uint32 = ArgTypes.uint32
int32 = ArgTypes.int32
uint64 = ArgTypes.uint64
int64 = ArgTypes.int64

MAX_ARGS = 6
MAX_NAME_LENGTH = 64
MAX_STRING_BYTES = 4096

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

ArgType = Union[type, ArgTypes]


# --------------------------------------------------------------------------- native ABI


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


_ProviderPtr = ctypes.POINTER(SDTProviderStruct)
_ProbePtr = ctypes.POINTER(SDTProbeStruct)


def _bind(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


_provider_init = _bind(_cdll, "providerInit", _ProviderPtr, ctypes.c_char_p)
_provider_use_memfd = _bind(_cdll, "providerUseMemfd", ctypes.c_int, _ProviderPtr, ctypes.c_int)
_provider_add_probe = _bind(_cdll, "providerAddProbe", _ProbePtr, _ProviderPtr, ctypes.c_char_p,
                            ctypes.c_int)  # then `argCount` C ints (variadic)
_provider_load = _bind(_cdll, "providerLoad", ctypes.c_int, _ProviderPtr)
_provider_unload = _bind(_pydll, "providerUnload", ctypes.c_int, _ProviderPtr)
_provider_destroy = _bind(_pydll, "providerDestroy", None, _ProviderPtr)
_probe_semaphore = _bind(_cdll, "probeSemaphore", ctypes.c_void_p, _ProbePtr)


class Semaphore(ctypes.c_uint16):
    """Live view of a probe's 16-bit USDT semaphore (what :attr:`Probe.enabled` holds).

    Truthy while at least one tracer has the probe enabled; the truth test is ctypes' C-level
    compare of the two bytes, so ``if probe.enabled:`` costs no Python call.  ``int()`` gives the
    count of attached tracer probes.  Read ``probe.enabled`` each time: a view kept across
    ``unload()`` points at unmapped memory.
    """

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return bool(self) == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Semaphore enabled={bool(self)} count={self.value}>"


def _error_of(handle: Any, what: str) -> ProviderError:
    message = handle.contents.error if handle else None
    text = message.decode("utf-8", "replace") if message else "unknown error"
    return ProviderError(f"{what}: {text}")


# --------------------------------------------------------------------------- argument specs


class _Arg:
    """One declared argument: how it is checked, passed and described."""

    __slots__ = ("declared", "code", "kind", "low", "high", "wide")

    def __init__(self, declared: ArgType, code: ArgTypes, kind: str) -> None:
        self.declared = declared
        self.code = code
        self.kind = kind  # "int", "bool" or "str"
        size = abs(int(code))
        self.wide = kind == "int" and size == 8
        if kind == "str":
            self.low, self.high = 0, 0
        elif int(code) < 0:
            self.low, self.high = -(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1
        else:
            self.low, self.high = 0, (1 << (8 * size)) - 1

    @property
    def label(self) -> str:
        if isinstance(self.declared, type):
            return self.declared.__name__
        return self.code.name


def _resolve_arg(declared: Any) -> _Arg:
    if declared is bool:
        return _Arg(bool, ArgTypes.uint8, "bool")
    if declared is int:
        return _Arg(int, ArgTypes.int64, "int")
    if declared is str or declared is bytes:
        return _Arg(declared, ArgTypes.uint64, "str")
    if isinstance(declared, ArgTypes) and declared is not ArgTypes.noarg:
        return _Arg(declared, declared, "int")
    raise TypeError(
        f"unsupported probe argument type {declared!r}: use int, bool, str, bytes or a fixed "
        "width such as usdtkit.provider.uint8 (stapsdt.ArgTypes)"
    )


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be a str, not {type(name).__name__}")
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid {what} name {name!r}: use [A-Za-z_][A-Za-z0-9_]*, "
            f"at most {MAX_NAME_LENGTH} characters"
        )
    return name


# Slow paths of argument conversion, called only for unusual values (and to raise).


def _int_arg(ctx: Tuple[str, List[_Arg]], index: int, value: Any) -> int:
    label, args = ctx
    spec = args[index]
    if isinstance(value, (str, bytes, float)) or not hasattr(type(value), "__index__"):
        raise TypeError(
            f"probe {label}: argument {index + 1} ({spec.label}) must be an int, "
            f"not {type(value).__name__}"
        )
    number = value.__index__()
    if not spec.low <= number <= spec.high:
        raise ValueError(
            f"probe {label}: argument {index + 1} ({spec.label}) = {number} is out of range "
            f"[{spec.low}, {spec.high}]"
        )
    return number


def _wide_arg(ctx: Tuple[str, List[_Arg]], index: int, value: Any) -> Any:
    """An 8-byte argument outside the C ``int`` range (or not an exact int): check it, then box it
    in a 64-bit ctypes integer so all 64 bits reach the register."""
    number = _int_arg(ctx, index, value)
    if _INT_FAST and -(2**31) <= number < 2**31:
        return number
    return (ctypes.c_int64 if int(ctx[1][index].code) < 0 else ctypes.c_uint64)(number)


def _bool_arg(ctx: Tuple[str, List[_Arg]], index: int, value: Any) -> int:
    label, args = ctx
    if hasattr(type(value), "__index__") and not isinstance(value, (str, bytes)):
        number = value.__index__()
        if number in (0, 1):
            return number
    raise TypeError(
        f"probe {label}: argument {index + 1} (bool) must be a bool (or 0/1), not {value!r}"
    )


def _cut(data: bytes, from_text: bool) -> bytes:
    data = data[:MAX_STRING_BYTES]
    if from_text:  # do not leave half a UTF-8 character at the end
        data = data.decode("utf-8", "ignore").encode("utf-8")
    return data


def _str_arg(ctx: Tuple[str, List[_Arg]], index: int, value: Any) -> Optional[bytes]:
    label, args = ctx
    if value is None:
        return None
    from_text = isinstance(value, str)
    if from_text:
        data = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        raise TypeError(
            f"probe {label}: argument {index + 1} ({args[index].label}) must be str or bytes, "
            f"not {type(value).__name__}"
        )
    if 0 in data:
        raise ValueError(
            f"probe {label}: argument {index + 1} ({args[index].label}) contains a NUL byte, "
            "which a C string cannot carry"
        )
    return _cut(data, from_text) if len(data) > MAX_STRING_BYTES else data


# Probe functions are called through a prototype without argtypes: ctypes then passes a Python
# int as a C int (libffi sign-extends it into the 64-bit register), bytes as a pointer to their
# buffer and None as NULL, with none of the per-argument conversion objects argtypes would create
# (about 85 ns per argument).  Values are range-checked beforehand, so a C int carries any 1-, 2- or
# 4-byte argument exactly (the tracer reads only the low bytes); 8-byte arguments outside the C int
# range are boxed in c_int64/c_uint64.  PYFUNCTYPE: the GIL stays held during the call (the site is a
# NOP, or a uprobe handled synchronously by the kernel), which is cheaper than releasing it and is
# what makes unloading safe against concurrent firing.
_SITE_PROTOTYPE = ctypes.PYFUNCTYPE(None)


def _ints_are_sign_extended() -> bool:
    """Whether a Python int passed without argtypes arrives sign-extended to 64 bits (libffi does
    this on x86_64); if not, every 8-byte argument is boxed."""
    try:
        llabs = ctypes.CDLL(None).llabs
        llabs.restype = ctypes.c_longlong
        return llabs(-5) == 5 and llabs(-(2**31)) == 2**31 and llabs(2**31 - 1) == 2**31 - 1
    except (OSError, AttributeError):
        return False


_INT_FAST = _ints_are_sign_extended()


def _noop(*args: Any) -> None:
    """Stands in for the probe function while the provider is not loaded."""


_FACTORY_CACHE: Dict[Tuple[Any, ...], Callable[..., Callable[..., None]]] = {}


def _load_fast_fire() -> Optional[Callable[..., bool]]:
    """The optional C fast path (``usdtkit._native._fastfire``), if it was built and agrees on limits."""
    if os.environ.get("USDTKIT_NO_FAST_FIRE") == "1":
        return None
    try:
        from ._native import _fastfire
    except ImportError:
        return None
    return _fastfire.fire if _fastfire.MAX_STRING_BYTES == MAX_STRING_BYTES else None


_FAST_FIRE = _load_fast_fire()
_KIND_OF_CODE = {1: "B", -1: "b", 2: "H", -2: "h", 4: "I", -4: "i", 8: "Q", -8: "q"}


def _fast_kind(arg: "_Arg") -> int:
    if arg.kind == "str":
        return ord("s")
    if arg.kind == "bool":
        return ord("?")
    return ord(_KIND_OF_CODE[int(arg.code)])


def _fire_factory(args: List[_Arg]) -> Callable[..., Callable[..., None]]:
    """Generate (once per signature) a factory of specialised fire functions.

    The generated function reads ``slot.sem`` (a C-level truth test), returns at once when the
    probe is disabled, else checks each argument with inline fast paths and calls ``slot.call``,
    the ctypes prototype of the probe's function.  ``slot`` is read at each step, never cached,
    so an unload swapping it out is always seen.
    """
    key = tuple((a.kind, int(a.code)) for a in args) + ((_INT_FAST, _FAST_FIRE is not None),)
    factory = _FACTORY_CACHE.get(key)
    if factory is not None:
        return factory
    params = ", ".join(f"a{i}" for i in range(len(args)))
    lines = [
        "def make(slot, ctx, _int, _wide, _bool, _str, _fast=_FAST_FIRE):",
        f"    def fire({params}):",
        "        if slot.sem:",
    ]
    if _FAST_FIRE is not None:
        # One C call checks, converts and fires; it declines (False) whatever needs the Python path.
        kinds = bytes(_fast_kind(a) for a in args)
        lines.append(f"            if _fast(slot.addr, {kinds!r}{', ' if args else ''}{params}): return")
    for i, arg in enumerate(args):
        a = f"a{i}"
        if arg.wide and not _INT_FAST:
            lines += [f"            {a} = _wide(ctx, {i}, {a})"]
        elif arg.wide:
            low = max(arg.low, -(2**31))
            lines += [
                f"            if {a}.__class__ is not int or not {low} <= {a} <= {2**31 - 1}:",
                f"                {a} = _wide(ctx, {i}, {a})",
            ]
        elif arg.kind == "int":
            lines += [
                f"            if {a}.__class__ is not int or not {arg.low} <= {a} <= {arg.high}:",
                f"                {a} = _int(ctx, {i}, {a})",
            ]
        elif arg.kind == "bool":
            lines += [
                f"            if {a}.__class__ is not bool:",
                f"                {a} = _bool(ctx, {i}, {a})",
            ]
        else:
            # Up to MAX_STRING_BYTES // 4 characters cannot exceed the cap once encoded.
            lines += [
                f"            if {a}.__class__ is str and len({a}) <= {MAX_STRING_BYTES // 4} "
                f"and '\\x00' not in {a}:",
                f"                {a} = {a}.encode()",
                f"            elif {a}.__class__ is not bytes or 0 in {a} or len({a}) > {MAX_STRING_BYTES}:",
                f"                {a} = _str(ctx, {i}, {a})",
            ]
    lines += [f"            slot.call({params})", "    return fire"]
    namespace: Dict[str, Any] = {}
    namespace["_FAST_FIRE"] = _FAST_FIRE
    exec(compile("\n".join(lines), f"<usdtkit probe {key}>", "exec"), namespace)
    factory = _FACTORY_CACHE[key] = namespace["make"]
    return factory


# --------------------------------------------------------------------------- probes


class _Slot:
    """Mutable state shared by a probe and its generated fire function."""

    __slots__ = ("sem", "call", "addr", "probe")

    def __init__(self, probe: "Probe") -> None:
        self.sem: Semaphore = Semaphore()
        self.call: Callable[..., None] = _noop
        self.addr = 0  # the site function's address, for the C fast path (0: not loaded)
        self.probe = weakref.ref(probe)

    def switch_off(self) -> None:
        off = Semaphore()
        probe = self.probe()
        if probe is not None:
            probe.enabled = off
        self.sem = off
        self.addr = 0
        self.call = _noop


class Probe:
    """A declared probe.  Fire it by calling it; test :attr:`enabled` first on hot paths.

    ``probe(*args)`` (or ``probe.fire(*args)``, the same generated function) fires with exactly the
    declared number of arguments; it does nothing unless the probe is enabled and loaded.
    :attr:`enabled` is a :class:`Semaphore` view: ``if probe.enabled: probe(...)`` costs a single
    memory read when nobody traces the probe, and skips building the arguments.
    """

    __slots__ = ("name", "provider", "types", "enabled", "fire", "_slot", "_native", "__weakref__")

    name: str
    provider: "Provider"
    types: Tuple[ArgType, ...]
    enabled: Semaphore
    fire: Callable[..., None]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("declare probes with Provider.probe()")

    @classmethod
    def _create(cls, provider: "Provider", name: str, args: List[_Arg], native: Any) -> "Probe":
        ctx = (f"{provider.name}:{name}", args)
        probe_type = type(
            "Probe", (cls,), {"__slots__": (), "__module__": cls.__module__, "__qualname__": cls.__qualname__}
        )
        probe = object.__new__(probe_type)
        slot = _Slot(probe)
        fire = _fire_factory(args)(slot, ctx, _int_arg, _wide_arg, _bool_arg, _str_arg)
        fire.__name__ = name if not keyword.iskeyword(name) else f"{name}_"
        fire.__qualname__ = f"{provider.name}.{fire.__name__}"
        probe_type.__call__ = staticmethod(fire)  # type: ignore[attr-defined]
        probe.name = name
        probe.provider = provider
        probe.types = tuple(a.declared for a in args)
        probe.enabled = slot.sem
        probe.fire = fire
        probe._slot = slot
        probe._native = native
        return probe

    def __call__(self, *args: Any) -> None:  # replaced per probe by the generated function
        raise NotImplementedError

    @property
    def loaded(self) -> bool:
        """True if the probe exists in the currently loaded object (it can fire)."""
        return self._slot.call is not _noop

    @property
    def argument_types(self) -> Tuple[ArgTypes, ...]:
        """The native argument types (``stapsdt.ArgTypes``) this probe was declared with."""
        return tuple(_resolve_arg(t).code for t in self.types)

    def __repr__(self) -> str:
        types = ", ".join(t.__name__ if isinstance(t, type) else t.name for t in self.types)
        return f"<Probe {self.provider.name}:{self.name}({types}) enabled={bool(self.enabled)}>"


# --------------------------------------------------------------------------- providers

_ids = itertools.count(1)  # call and span ids; next() on it is atomic under the GIL
_live_providers: "weakref.WeakSet[Provider]" = weakref.WeakSet()

F = TypeVar("F", bound=Callable[..., Any])


class _NativeProvider:
    """Owns the native handle.  Its :meth:`destroy` is the provider's finalizer (at close, garbage
    collection or interpreter exit), so it must not reference the :class:`Provider` itself."""

    __slots__ = ("handle", "slots")

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.slots: List[_Slot] = []

    def switch_off(self) -> None:
        for slot in self.slots:
            slot.switch_off()

    def destroy(self) -> None:
        handle, self.handle = self.handle, None
        if handle:
            self.switch_off()
            _provider_destroy(handle)  # unloads; runs with the GIL held


class Provider:
    """A USDT provider: a named set of probes loaded into this process as one small ELF object.

    ``Provider("myapp")`` stores the object as a content-named file in a private runtime
    directory (shared by all processes with the same probes: attach once by :attr:`path`);
    ``Provider("myapp", memfd=True)`` keeps it in a memfd (attach by PID).
    """

    def __init__(self, name: str, *, memfd: bool = False) -> None:
        _check_name(name, "provider")
        handle = _provider_init(name.encode("ascii"))
        if not handle:
            raise ProviderError(f"provider {name!r}: cannot create it (out of memory)")
        native = _NativeProvider(handle)
        self._finalizer = weakref.finalize(self, native.destroy)
        if memfd and not _provider_use_memfd(handle, 1):
            self._finalizer()
            raise ProviderError(f"provider {name!r}: memfd_create() is not available here")
        self._name = name
        self._memfd = bool(memfd)
        self._native = native
        self._probes: Dict[str, Probe] = {}
        self._spans: Dict[str, Span] = {}
        self._lock = threading.RLock()
        self._loaded = False
        self._pending = False
        _live_providers.add(self)

    # ---- declaration

    def probe(self, name: str, *types: ArgType) -> Probe:
        """Declare a probe with up to 6 argument types (``int``, ``bool``, ``str``, ``bytes`` or a
        fixed width such as :data:`uint8`).  Declared after :meth:`load`, it fires after the next
        ``load()``."""
        _check_name(name, "probe")
        if len(types) > MAX_ARGS:
            raise ValueError(
                f"probe {self._name}:{name} has {len(types)} arguments; at most {MAX_ARGS} are allowed"
            )
        args = [_resolve_arg(t) for t in types]
        with self._lock:
            handle = self._handle()
            if name in self._probes:
                raise ValueError(f"probe {self._name}:{name} is already declared")
            native = _provider_add_probe(handle, name.encode("ascii"), len(args),
                                         *[int(a.code) for a in args])
            if not native:
                raise _error_of(handle, f"cannot add probe {self._name}:{name}")
            probe = Probe._create(self, name, args, native)
            self._native.slots.append(probe._slot)
            self._probes[name] = probe
            if self._loaded:
                self._pending = True
            return probe

    def span(self, name: str) -> "Span":
        """Declare (or get) a span: probes ``<name>_start(uint64 id)`` and ``<name>_done(uint64
        id, uint64 duration_ns, bool raised)``.  Use it as ``with span() as span_id:``."""
        with self._lock:
            span = self._spans.get(name)
            if span is None:
                _check_name(name, "span")
                start = self.probe(f"{name}_start", uint64)
                done = self.probe(f"{name}_done", uint64, uint64, bool)
                span = self._spans[name] = Span(name, start, done)
            return span

    def traced(self, name: Optional[str] = None) -> Callable[[F], F]:
        """Decorator: wrap a function (sync or async) with probes ``<name>_entry(uint64 id)`` and
        ``<name>_return(uint64 id, uint64 duration_ns, bool raised)``; ``name`` defaults to the
        function's ``__name__``.  Untraced, the wrapper adds two semaphore reads to the call."""

        def decorate(func: F) -> F:
            base = name if name is not None else getattr(func, "__name__", "")
            if not isinstance(base, str) or not _NAME_RE.match(base):
                raise ValueError(f"cannot derive a probe name from {base!r}: pass traced(name=...)")
            entry = self.probe(f"{base}_entry", uint64)
            ret = self.probe(f"{base}_return", uint64, uint64, bool)
            return _wrap(func, entry, ret)

        return decorate

    # ---- lifecycle

    def load(self) -> "Provider":
        """Generate, store and load the object (a reload if probes were added since the last
        load; a no-op if nothing changed).  Raises :class:`ProviderError` on failure."""
        with self._lock:
            handle = self._handle()
            if self._loaded:
                if not self._pending:
                    return self
                self._unload_locked()
            if _provider_load(handle) != 0:
                raise _error_of(handle, f"cannot load provider {self._name!r}")
            try:
                for probe in self._probes.values():
                    self._bind(probe)
            except BaseException:
                self._unload_locked()
                raise
            self._loaded = True
            self._pending = False
        return self

    def _bind(self, probe: Probe) -> None:
        site = probe._native.contents._fire
        semaphore = _probe_semaphore(probe._native)
        if not site or not semaphore:
            raise ProviderError(f"probe {self._name}:{probe.name}: not resolved after load")
        slot = probe._slot
        slot.call = _SITE_PROTOTYPE(site)  # before the semaphore: a fire that sees it enabled can call
        slot.addr = site if isinstance(site, int) else ctypes.cast(site, ctypes.c_void_p).value or 0
        view = Semaphore.from_address(semaphore)
        slot.sem = view
        probe.enabled = view

    def unload(self) -> None:
        """Unload the object (probes stop firing and read as disabled).  ``load()`` reloads."""
        with self._lock:
            if self._native.handle is not None and self._loaded:
                self._unload_locked()

    def _unload_locked(self) -> None:
        self._native.switch_off()
        self._loaded = False
        handle = self._native.handle
        if _provider_unload(handle) != 0:
            raise _error_of(handle, f"cannot unload provider {self._name!r}")

    def close(self) -> None:
        """Unload and free the provider; its probes stay callable but never fire again."""
        with self._lock:
            self._loaded = False
            self._finalizer()
        _live_providers.discard(self)

    def __enter__(self) -> "Provider":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _handle(self) -> Any:
        handle = self._native.handle
        if handle is None:
            raise ProviderError(f"provider {self._name!r} is closed")
        return handle

    # ---- introspection

    @property
    def name(self) -> str:
        return self._name

    @property
    def memfd(self) -> bool:
        """True if the object is kept in a memfd rather than a file."""
        return self._memfd

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def closed(self) -> bool:
        return self._native.handle is None

    @property
    def needs_reload(self) -> bool:
        """True if probes were declared after the last load (``load()`` picks them up)."""
        return self._pending

    @property
    def probes(self) -> Dict[str, Probe]:
        """The declared probes by name (a copy)."""
        with self._lock:
            return dict(self._probes)

    @property
    def path(self) -> Optional[str]:
        """Where the loaded object can be opened by other processes (tracers): the shared file,
        or ``/proc/<pid>/fd/<n>`` in memfd mode; None when not loaded."""
        with self._lock:
            handle = self._native.handle
            if handle is None or not self._loaded:
                return None
            native = handle.contents
            if native._memfd >= 0:
                return f"/proc/{os.getpid()}/fd/{native._memfd}"
            return native._filename.decode() if native._filename else None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "loaded" if self._loaded else "not loaded"
        return f"<Provider {self._name!r} {len(self._probes)} probes, {state}>"


class Span:
    """A pair of probes around a block: ``with span() as span_id:`` fires ``<name>_start(id)`` on
    entry and ``<name>_done(id, duration_ns, raised)`` on exit (also for ``async with``)."""

    __slots__ = ("name", "start", "done")

    def __init__(self, name: str, start: Probe, done: Probe) -> None:
        self.name = name
        self.start = start
        self.done = done

    def __call__(self) -> "SpanScope":
        return SpanScope(self.start, self.done)

    def __repr__(self) -> str:
        return f"<Span {self.start.provider.name}:{self.name}>"


class SpanScope:
    """One use of a :class:`Span`; ``__enter__`` returns its id (unique in the process)."""

    __slots__ = ("_start", "_done", "_t0", "id")

    def __init__(self, start: Probe, done: Probe) -> None:
        self._start = start
        self._done = done
        self._t0: Optional[int] = None
        self.id = next(_ids)

    def __enter__(self) -> int:
        if self._start.enabled or self._done.enabled:
            self._start.fire(self.id)
            self._t0 = time.perf_counter_ns()
        return self.id

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        t0 = self._t0
        if t0 is not None:
            self._t0 = None
            self._done.fire(self.id, time.perf_counter_ns() - t0, exc_type is not None)

    async def __aenter__(self) -> int:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


def _wrap(func: F, entry: Probe, ret: Probe) -> F:
    clock = time.perf_counter_ns
    ids = _ids

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not (entry.enabled or ret.enabled):
                return await func(*args, **kwargs)
            call_id = next(ids)
            entry.fire(call_id)
            t0 = clock()
            raised = True
            try:
                result = await func(*args, **kwargs)
                raised = False
                return result
            finally:
                ret.fire(call_id, clock() - t0, raised)

        wrapper: Any = async_wrapper
    else:

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not (entry.enabled or ret.enabled):
                return func(*args, **kwargs)
            call_id = next(ids)
            entry.fire(call_id)
            t0 = clock()
            raised = True
            try:
                result = func(*args, **kwargs)
                raised = False
                return result
            finally:
                ret.fire(call_id, clock() - t0, raised)

        wrapper = sync_wrapper
    wrapper.entry_probe = entry
    wrapper.return_probe = ret
    return wrapper  # type: ignore[no-any-return]


def _reset_locks_in_child() -> None:
    # A lock held by another thread at fork() time would stay locked forever in the child.
    for provider in list(_live_providers):
        provider._lock = threading.RLock()


os.register_at_fork(after_in_child=_reset_locks_in_child)
