"""Providers and probes: declaration, and the lifecycle of the loaded object (load, reload,
unload, close, garbage collection, interpreter exit, fork)."""
from __future__ import annotations

import keyword
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, TypeVar

from ..errors import ProviderError
from . import abi
from .abi import MAX_ARGS
from .args import (
    NAME_RE,
    Arg,
    ArgType,
    bool_arg,
    check_name,
    int_arg,
    resolve_arg,
    str_arg,
    wide_arg,
)
from .firing import Slot, fire_factory, noop
from .mapping import Mapping
from .semaphore import Semaphore
from .spans import Span, wrap

if TYPE_CHECKING:
    from stapsdt import ArgTypes

F = TypeVar("F", bound=Callable[..., Any])


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
    def _create(cls, provider: "Provider", name: str, args: List[Arg], native: Any) -> "Probe":
        ctx = (f"{provider.name}:{name}", args)
        probe_type = type(
            "Probe", (cls,), {"__slots__": (), "__module__": cls.__module__, "__qualname__": cls.__qualname__}
        )
        probe = object.__new__(probe_type)
        slot = Slot(probe)
        fire = fire_factory(args)(slot, ctx, int_arg, wide_arg, bool_arg, str_arg)
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
        return self._slot.call is not noop

    @property
    def argument_types(self) -> Tuple["ArgTypes", ...]:
        """The native argument types (``stapsdt.ArgTypes``) this probe was declared with."""
        return tuple(resolve_arg(t).code for t in self.types)

    def __repr__(self) -> str:
        types = ", ".join(t.__name__ if isinstance(t, type) else t.name for t in self.types)
        return f"<Probe {self.provider.name}:{self.name}({types}) enabled={bool(self.enabled)}>"


_natives: "weakref.WeakSet[_NativeProvider]" = weakref.WeakSet()

# How long the finalizer waits for an operation in progress on another thread (a load writes a
# file and may wait for the runtime directory's lock) before leaving the object to process exit.
_DESTROY_WAIT = 30.0


class _NativeProvider:
    """Owns the native handle, the mapping of the loaded object and the provider's lock.  Its
    :meth:`destroy` is the provider's finalizer (at close, garbage collection or interpreter exit),
    so it must not reference the :class:`Provider` itself."""

    __slots__ = ("handle", "slots", "mapping", "lock", "closing", "__weakref__")

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.slots: List[Slot] = []
        self.mapping: Optional[Mapping] = None
        self.lock = threading.RLock()
        self.closing = False
        _natives.add(self)

    def switch_off(self) -> None:
        for slot in self.slots:
            slot.switch_off()

    def unload(self, handle: Any) -> int:
        """Switch the probes off and unload; the object stays mapped while Python references it."""
        self.switch_off()
        mapping, self.mapping = self.mapping, None
        if mapping is not None:
            mapping.adopt_memfd(handle)
        return abi.library().provider_unload(handle)

    def destroy(self) -> None:
        # At interpreter exit this runs while daemon threads may still use the provider: from now
        # on operations refuse to start, and the one in progress (holding the lock) finishes first.
        self.closing = True
        if not self.lock.acquire(timeout=_DESTROY_WAIT):
            return
        try:
            handle, self.handle = self.handle, None
            if handle:
                self.unload(handle)
                abi.library().provider_destroy(handle)
        finally:
            self.lock.release()


class Provider:
    """A USDT provider: a named set of probes loaded into this process as one small ELF object.

    ``Provider("myapp")`` stores the object as a content-named file in a private runtime
    directory (shared by all processes with the same probes: attach once by :attr:`path`);
    ``Provider("myapp", memfd=True)`` keeps it in a memfd (attach by PID).
    """

    def __init__(self, name: str, *, memfd: bool = False) -> None:
        check_name(name, "provider")
        lib = abi.library()  # a missing or broken native library is reported here
        handle = lib.provider_init(name.encode("ascii"))
        if not handle:
            raise ProviderError(f"provider {name!r}: cannot create it (out of memory)")
        native = _NativeProvider(handle)
        self._finalizer = weakref.finalize(self, native.destroy)
        if memfd and not lib.provider_use_memfd(handle, 1):
            self._finalizer()
            raise ProviderError(f"provider {name!r}: memfd_create() is not available here")
        self._name = name
        self._memfd = bool(memfd)
        self._native = native
        self._probes: Dict[str, Probe] = {}
        self._spans: Dict[str, Span] = {}
        self._loaded = False
        self._pending = False

    @property
    def _lock(self) -> threading.RLock:
        return self._native.lock

    # ---- declaration

    def probe(self, name: str, *types: ArgType) -> Probe:
        """Declare a probe with up to 6 argument types (``int``, ``bool``, ``str``, ``bytes`` or a
        fixed width such as :data:`uint8`).  Declared after :meth:`load`, it fires after the next
        ``load()``."""
        check_name(name, "probe")
        if len(types) > MAX_ARGS:
            raise ValueError(
                f"probe {self._name}:{name} has {len(types)} arguments; at most {MAX_ARGS} are allowed"
            )
        args = [resolve_arg(t) for t in types]
        with self._lock:
            handle = self._handle()
            if name in self._probes:
                raise ValueError(f"probe {self._name}:{name} is already declared")
            native = abi.library().provider_add_probe(handle, name.encode("ascii"), len(args),
                                            *[int(a.code) for a in args])
            if not native:
                raise abi.error_of(handle, f"cannot add probe {self._name}:{name}")
            probe = Probe._create(self, name, args, native)
            self._native.slots.append(probe._slot)
            self._probes[name] = probe
            if self._loaded:
                self._pending = True
            return probe

    def span(self, name: str) -> Span:
        """Declare (or get) a span: probes ``<name>_start(uint64 id)`` and ``<name>_done(uint64
        id, uint64 duration_ns, bool raised)``.  Use it as ``with span() as span_id:``."""
        with self._lock:
            span = self._spans.get(name)
            if span is None:
                check_name(name, "span")
                uint64 = abi.arg_types().uint64
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
            if not isinstance(base, str) or not NAME_RE.match(base):
                raise ValueError(f"cannot derive a probe name from {base!r}: pass traced(name=...)")
            uint64 = abi.arg_types().uint64
            entry = self.probe(f"{base}_entry", uint64)
            ret = self.probe(f"{base}_return", uint64, uint64, bool)
            return wrap(func, entry, ret)

        return decorate

    # ---- lifecycle

    def load(self) -> "Provider":
        """Generate, store and load the object (a reload if probes were added since the last
        load; a no-op if nothing changed).  Raises :class:`ProviderError` on failure.  In a process
        started by a waiting tracer it returns once that tracer has attached (see the package doc)."""
        with self._lock:
            handle = self._handle()
            if self._loaded:
                if not self._pending:
                    return self
                self._unload_locked()
            if abi.library().provider_load(handle) != 0:
                raise abi.error_of(handle, f"cannot load provider {self._name!r}")
            try:
                mapping = self._native.mapping = Mapping(handle)
                for probe in self._probes.values():
                    self._bind(probe, mapping)
            except BaseException:
                self._unload_locked()
                raise
            self._loaded = True
            self._pending = False
        return self

    def _bind(self, probe: Probe, mapping: Mapping) -> None:
        site = probe._native.contents._fire
        semaphore = abi.library().probe_semaphore(probe._native)
        if not site or not semaphore:
            raise ProviderError(f"probe {self._name}:{probe.name}: not resolved after load")
        slot = probe._slot
        slot.call = mapping.call(site)  # before the semaphore: a fire that sees it enabled can call
        slot.addr = mapping.site(site)
        view = mapping.semaphore(semaphore)
        slot.sem = view
        probe.enabled = view

    def unload(self) -> None:
        """Unload the object (probes stop firing and read as disabled).  ``load()`` reloads."""
        with self._lock:
            if self._native.handle is not None and self._loaded:
                self._unload_locked()

    def _unload_locked(self) -> None:
        self._loaded = False
        handle = self._native.handle
        if self._native.unload(handle) != 0:
            raise abi.error_of(handle, f"cannot unload provider {self._name!r}")

    def close(self) -> None:
        """Unload and free the provider; its probes stay callable but never fire again.  In file
        mode its file is removed unless another process (or another provider) still maps it."""
        with self._lock:
            self._loaded = False
            self._finalizer()

    def __enter__(self) -> "Provider":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _handle(self) -> Any:
        handle = self._native.handle
        if handle is None or self._native.closing:
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


def _reset_locks_in_child() -> None:
    # A lock held by another thread at fork() time would stay locked forever in the child.
    for native in list(_natives):
        native.lock = threading.RLock()


os.register_at_fork(after_in_child=_reset_locks_in_child)
