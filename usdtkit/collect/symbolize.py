"""Turn user-space addresses into ``function+0xoff [module]``, even after the process has exited.

A stack recorded in the kernel holds runtime addresses.  To name them we need the process's mappings
(which object is where, and its load bias) and the object's function symbols.  Mappings vanish when
the process exits, so the session *observes* a process while it runs (:meth:`Symbolizer.observe`,
cheap when nothing changed) and symbolises later from that snapshot.  Symbols come from usdtkit's own
discovery (``.symtab``, ``.dynsym``, MiniDebugInfo, debug files), read once per object.
"""
from __future__ import annotations

import bisect
import os
from typing import Dict, List, Tuple

from .. import elf
from ..errors import UsdtkitError

_Table = Tuple[List[int], List[Tuple[int, str]]]  # sorted starts, (size, name) per start


class Symbolizer:
    def __init__(self) -> None:
        self._maps_text: Dict[int, str] = {}
        self._objects: Dict[int, list] = {}
        self._tables: Dict[str, _Table] = {}

    def observe(self, pid: int) -> None:
        """Snapshot ``pid``'s mapped objects if they changed since the last look."""
        try:
            with open(f"/proc/{pid}/maps") as handle:
                text = handle.read()
        except OSError:
            return
        if not text or self._maps_text.get(pid) == text:
            return
        try:
            objects = elf.process_objects(pid)
        except UsdtkitError:
            return
        self._maps_text[pid] = text
        # Merge rather than replace: a process that is exiting shows a partly torn-down map, and an
        # object unmapped since the last look may still have frames in a stack collected earlier.
        kept = [old for old in self._objects.get(pid, ())
                if not any(old.start < new.end and new.start < old.end for new in objects)]
        self._objects[pid] = sorted([*objects, *kept], key=lambda o: o.start)

    def _table(self, path: str) -> _Table:
        table = self._tables.get(path)
        if table is None:
            try:
                functions = sorted(elf.read_functions(path), key=lambda f: f.address)
            except UsdtkitError:
                functions = []
            starts = [f.address for f in functions]
            table = self._tables[path] = (starts, [(f.size, f.name) for f in functions])
        return table

    def symbolize(self, pid: int, address: int, detail: bool = True) -> str:
        """``name+0xoff [module]`` (``name`` alone with ``detail=False``); hex when unknown."""
        if pid not in self._objects:
            self.observe(pid)
        for obj in self._objects.get(pid, ()):
            if obj.start <= address < obj.end and obj.load_bias is not None:
                vaddr = address - obj.load_bias
                starts, entries = self._table(obj.open_path if os.path.exists(obj.open_path) else obj.path)
                index = bisect.bisect_right(starts, vaddr) - 1
                module = os.path.basename(obj.path)
                if index >= 0:
                    size, name = entries[index]
                    offset = vaddr - starts[index]
                    if offset < max(size, 1) or size == 0:
                        return f"{name}+{offset:#x} [{module}]" if detail else name
                return f"{address:#x} [{module}]" if detail else f"[{module}]"
        return f"{address:#x}"

    def knows(self, pid: int) -> bool:
        return pid in self._objects
