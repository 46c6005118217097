"""The default backend: a program traced before is loaded from the object cache, anything else is
compiled by bcc (and cached for the next time).

On a hit (:mod:`.objcache`) neither bcc nor the kernel headers are imported: the maps and programs come
from :mod:`.cached_program`.  On a miss bcc compiles and loads the program as always, and what it
compiled is captured and stored.  Layouts the cached loader does not serve (events through a perf buffer
on kernels without ring buffers) always take bcc.  ``USDTKIT_NO_OBJCACHE=1`` turns the cache off.
"""
from __future__ import annotations

from typing import Any, List, Optional

from . import objcache
from .backend import LoadedProgram
from .layout import ProgramLayout


def entry_functions(layout: ProgramLayout) -> List[str]:
    """The functions of ``layout`` that are attached somewhere, each once."""
    names = [a.function for a in layout.attachments] + [t.function for t in layout.tracepoints]
    return list(dict.fromkeys(names))


def _servable(layout: ProgramLayout) -> bool:
    """Whether the cached loader can serve ``layout``: its events, if any, go through a ring buffer
    (:mod:`.ringbuf`), not a perf buffer."""
    return "events" not in layout.maps or layout.ringbuf


def _matches(obj: objcache.CompiledObject, layout: ProgramLayout) -> bool:
    """The cached object has every function and map the layout uses, with the layout's key sizes."""
    tables = {t.name: t for t in obj.tables}
    for name, spec in layout.maps.items():
        table = tables.get(name)
        if table is None or (spec.key is not None and table.key_size != spec.key.size):
            return False
    return all(name in obj.functions for name in entry_functions(layout))


def _load_cached(obj: objcache.CompiledObject, layout: ProgramLayout) -> Optional[LoadedProgram]:
    """The cached object loaded, or None when the kernel refuses one of its maps or functions (then it
    is compiled again and the entry replaced)."""
    from ..errors import AttachError
    from . import capabilities
    from .cached_program import CachedProgram

    try:
        program = CachedProgram(obj, layout)
    except AttachError:
        return None
    try:
        program.preload(layout, multi=capabilities.detect().has_uprobe_multi)
    except AttachError:
        program.close()
        return None
    except BaseException:
        program.close()
        raise
    return program


class CachingBackend:
    """Loads from the object cache when it can, else through bcc; ``hit`` says which the last load took."""

    name = "bcc"

    def __init__(self) -> None:
        self.hit: Optional[bool] = None

    def load(self, layout: ProgramLayout) -> LoadedProgram:
        key = objcache.cache_key(layout.text) if objcache.enabled() and _servable(layout) else None
        if key is not None:
            obj = objcache.load(key)
            if obj is not None and _matches(obj, layout):
                cached = _load_cached(obj, layout)
                if cached is not None:
                    self.hit = True
                    return cached
        from .bcc_backend import BccBackend

        self.hit = False
        program: Any = BccBackend().load(layout)
        if key is not None:
            captured = objcache.capture(program.module, entry_functions(layout))
            if captured is not None:
                objcache.store(key, captured)
        return program
