"""``usdtkit list``: what can be probed in a file, a library or a running process.

Lists USDT probes (every call site, with its argument spec) and function symbols (uprobe targets), as an
aligned table or one JSON document.  Discovery only reads files: no root, no bcc, no kernel support.
Kept fast on purpose (libjvm's 58,000 functions in well under bpftrace's time): big symbol tables are
handled in columns and serialised without building one object per function.
"""
from __future__ import annotations

import argparse
import json
import sys
from itertools import repeat
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from ..errors import ElfError, UsageError

DESCRIPTION = """\
List the USDT probes and the functions (uprobe targets) of TARGET, an ELF file or a library name
(libc, c, libstdc++, libpython3.11.so, resolved like the dynamic loader does), or of every ELF object
mapped by process PID (including deleted and memfd-backed objects, and files inside containers).

By default both USDT probes and functions are listed, like `bpftrace -l`; --usdt or --functions
restrict the listing to one kind.  PATTERN is a shell glob (*, ?, [...]) matched against
provider:name for probes (or against the name alone when PATTERN has no colon) and against the
function name for functions (and its demangled form with --demangle)."""

EPILOG = """\
examples:
  usdtkit list /usr/lib/postgresql/15/bin/postgres 'postgresql:checkpoint*'
  usdtkit list --usdt libc
  usdtkit list --functions libstdc++ '_ZNSt6thread*' --demangle
  usdtkit list -p 1234 'python:*'
  usdtkit list --json /usr/bin/python3.11 > probes.json

JSON: {"probes": [...], "functions": [...]} (only the kinds listed); a probe has provider, name,
binary, semaphore and locations (address, base, semaphore, arguments, file_offset, args, ...); a
function has name, address, size, file_offset, binding, version, source, demangled, binary.  With
-p, entries also carry pid and open_path, and "objects" lists the mapped objects with their load bias.
exit status: 0 listed (possibly nothing), 1 bad target or unreadable file, 2 usage error."""


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    parser = subparsers.add_parser(
        "list",
        help="list the USDT probes and functions of a file, library or process",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", nargs="?", metavar="TARGET", help="ELF file or library name (omit with -p)")
    parser.add_argument("pattern", nargs="?", metavar="PATTERN", help="glob filter (default: everything)")
    parser.add_argument("-p", "--pid", type=int, metavar="PID", help="list the objects mapped by process PID")
    parser.add_argument("--usdt", action="store_true", help="list USDT probes")
    parser.add_argument("--functions", action="store_true", help="list function symbols")
    parser.add_argument("-C", "--demangle", action="store_true", help="demangle C++ function names")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


# --------------------------------------------------------------------------- gathering
class Listed:
    """What was found in one object: its probes and function table (either may be None)."""

    def __init__(self, display: str, open_path: str, obj=None) -> None:
        self.display = display
        self.open_path = open_path
        self.obj = obj  # MappedObject for -p listings
        self.probes: list = []
        self.functions = None  # symbols.FunctionTable
        self.demangled: Optional[List[Optional[str]]] = None


def _probe_filter(pattern: Optional[str]) -> Callable[[object], bool]:
    from ..elf.symbols import compile_glob

    match = compile_glob(pattern)
    if match is None:
        return lambda probe: True
    if ":" in pattern:  # type: ignore[operator]
        return lambda probe: bool(match(probe.qualified_name))
    return lambda probe: bool(match(probe.qualified_name) or match(probe.name))


def _gather(display: str, open_path: str, args: argparse.Namespace, usdt: bool, functions: bool,
            obj=None) -> Listed:
    from ..elf.image import ElfImage
    from ..elf.notes import probes_from_image
    from ..elf.symbols import compile_glob, function_table

    listed = Listed(display, open_path, obj)
    with ElfImage(open_path, display) as image:
        if usdt:
            keep = _probe_filter(args.pattern)
            listed.probes = [p for p in probes_from_image(image, display) if keep(p)]
        if functions:
            if not args.demangle:
                listed.functions = function_table(image, args.pattern)
            else:
                listed.functions = function_table(image)
    if functions and args.demangle:
        from ..elf.demangle import demangle_names

        table = listed.functions
        pretty = demangle_names(table.names)
        demangled = list(map(pretty.get, table.names))
        match = compile_glob(args.pattern)
        if match is not None:
            keep_rows = [bool(match(n) or (d is not None and match(d))) for n, d in zip(table.names, demangled)]
            table = table.select(keep_rows)
            demangled = [d for d, k in zip(demangled, keep_rows) if k]
        listed.functions = table
        listed.demangled = demangled
    return listed


def _targets(args: argparse.Namespace) -> Iterator[Tuple[str, str, object]]:
    if args.pid is not None:
        from ..elf.process import process_objects

        for obj in process_objects(args.pid):
            yield obj.path, obj.open_path, obj
        return
    from ..elf.targets import resolve_target

    path = resolve_target(args.target)
    yield path, path, None


def run(args: argparse.Namespace) -> int:
    if args.pid is not None:
        if args.target is not None and args.pattern is not None:
            raise UsageError("list: give either TARGET or -p PID, not both")
        args.pattern, args.target = args.target, None
    elif args.target is None:
        raise UsageError("list: name a TARGET (file or library) or a process with -p PID")
    usdt = args.usdt or not args.functions
    functions = args.functions or not args.usdt

    results: List[Listed] = []
    warnings: List[str] = []
    for display, open_path, obj in _targets(args):
        try:
            results.append(_gather(display, open_path, args, usdt, functions, obj))
        except ElfError as exc:
            if obj is None:
                raise
            warnings.append(str(exc))  # one bad object must not hide a process's others
    if args.pid is not None and not results and not warnings:
        from ..errors import TargetError

        raise TargetError(f"pid {args.pid}: no ELF objects mapped (kernel thread or zombie?)")
    for warning in warnings:
        print(f"usdtkit: warning: {warning}", file=sys.stderr)
    out = sys.stdout
    if args.json:
        _write_json(out, results, usdt, functions, args.pid)
    else:
        if hasattr(out, "reconfigure"):
            out.reconfigure(errors="backslashreplace")
        _write_table(out, results, usdt, functions)
    out.flush()
    return 0


# --------------------------------------------------------------------------- JSON
_encode = json.encoder.encode_basestring_ascii  # what json.dumps uses for str (ensure_ascii=True)

_FUNCTION_JSON = (
    '{"name": %s, "address": %d, "size": %d, "file_offset": %d, "binding": "%s", "version": %s, '
    '"source": %s, "demangled": %s, "binary": %s%s}'
)


def _json_or_null(values: Optional[Sequence[Optional[str]]], count: int):
    if values is None:
        return repeat("null", count)
    cache = {None: "null"}
    return [cache[v] if v in cache else cache.setdefault(v, _encode(v)) for v in values]


def function_json_lines(table, binary: str, demangled=None, extra: str = "") -> List[str]:
    """JSON text of each function of ``table``: the same document as ``FunctionSymbol.to_json``."""
    count = len(table)
    sources = table.sources
    source_json = {s: _encode(s) for s in set(sources)}
    rows = zip(
        map(_encode, table.names),
        table.addresses,
        table.sizes,
        table.offsets,
        table.bindings,
        _json_or_null(table.versions, count),
        map(source_json.__getitem__, sources),
        _json_or_null(demangled, count),
        repeat(_encode(binary), count),
        repeat(extra, count),
    )
    return list(map(_FUNCTION_JSON.__mod__, rows))


def _write_json(out, results: List[Listed], usdt: bool, functions: bool, pid: Optional[int]) -> None:
    parts: List[str] = ["{"]
    sections = []
    if pid is not None:
        objects = [json.dumps(r.obj.to_json()) for r in results]
        sections.append('"pid": %d' % pid)
        sections.append('"objects": [\n' + ",\n".join(objects) + "\n]")
    if usdt:
        probes = []
        for r in results:
            for probe in r.probes:
                doc = probe.to_json()
                if r.obj is not None:
                    doc["pid"] = r.obj.pid
                    doc["open_path"] = r.open_path
                probes.append(json.dumps(doc))
        sections.append('"probes": [\n' + ",\n".join(probes) + "\n]")
    if functions:
        lines: List[str] = []
        for r in results:
            extra = ""
            if r.obj is not None:
                extra = ', "pid": %d, "open_path": %s' % (r.obj.pid, _encode(r.open_path))
            lines.extend(function_json_lines(r.functions, r.display, r.demangled, extra))
        sections.append('"functions": [\n' + ",\n".join(lines) + "\n]")
    parts.append(",\n".join(sections))
    parts.append("}\n")
    out.write("\n".join(parts))


# --------------------------------------------------------------------------- table
def _write_table(out, results: List[Listed], usdt: bool, functions: bool) -> None:
    write = out.write
    for n, r in enumerate(results):
        if n:
            write("\n")
        where = r.display
        if r.obj is not None and r.obj.load_bias is not None:
            where += f"  (pid {r.obj.pid}, load bias {r.obj.load_bias:#x})"
        if usdt:
            _probe_table(write, where, r.probes)
        if functions:
            if usdt:
                write("\n")
            _function_table(write, where, r.functions, r.demangled)


def _probe_table(write, where: str, probes: list) -> None:
    sites = sum(len(p.locations) for p in probes)
    write(f"{where}: {len(probes)} USDT probe{'s' * (len(probes) != 1)}, {sites} call site{'s' * (sites != 1)}\n")
    if not probes:
        return
    names = [p.qualified_name for p in probes]
    width = max(len("PROBE"), *map(len, names))
    write(f"  {'PROBE':<{width}}  SITES  SEMAPHORE  ARGUMENTS\n")
    for name, probe in zip(names, probes):
        first = probe.locations[0].arguments if probe.locations else ""
        variants = len({loc.arguments for loc in probe.locations}) - 1
        more = f"  (+{variants} other spec{'s' * (variants != 1)})" if variants else ""
        sem = f"{probe.semaphore:#x}" if probe.semaphore else "-"
        write(f"  {name:<{width}}  {len(probe.locations):>5}  {sem:>9}  {first}{more}\n")


def _function_table(write, where: str, table, demangled) -> None:
    count = len(table)
    write(f"{where}: {count} function{'s' * (count != 1)}\n")
    if not count:
        return
    write(f"  {'ADDRESS':<16}  {'SIZE':>8}  {'BINDING':<7}  NAME\n")
    versions = table.versions or repeat(None, count)
    shown = table.names if demangled is None else [d or n for n, d in zip(table.names, demangled)]
    suffixes = ("" if v is None else "@" + v for v in versions)
    lines = map(
        "  %016x  %8d  %-7s  %s%s\n".__mod__,
        zip(table.addresses, table.sizes, table.bindings, shown, suffixes),
    )
    write("".join(lines))
