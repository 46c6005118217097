"""The modules of ``usdtkit.elf`` import each other in layers: no circle, counting imports made inside
functions too (a lazy import still ties two modules together, it only hides the circle until run time)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[2] / "usdtkit" / "elf"


def imports_within_package() -> Dict[str, Set[str]]:
    """For each module of ``usdtkit.elf`` (``__init__`` included), the sibling modules it imports anywhere
    in its body."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name in modules:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    edges.add(node.module.split(".")[0])
                else:  # from . import x, y: submodules, or names of the package itself
                    edges.update(a.name if a.name in modules else "__init__" for a in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("usdtkit.elf."):
                edges.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                edges.update(a.name.split(".")[2] for a in node.names if a.name.startswith("usdtkit.elf."))
        graph[name] = (edges & modules) - {name}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every elementary circle found by a depth-first walk from each module (as module lists)."""
    found: List[List[str]] = []
    seen = set()

    def walk(path: List[str]) -> None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == path[0]:
                key = frozenset(path)
                if key not in seen:
                    seen.add(key)
                    found.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:
                walk(path + [nxt])

    for start in sorted(graph):
        walk([start])
    return found


def test_the_walker_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_elf_modules_form_no_import_circle():
    graph = imports_within_package()
    assert {"image", "notes", "symbols", "debuginfo"} <= set(graph)
    assert cycles(graph) == []
