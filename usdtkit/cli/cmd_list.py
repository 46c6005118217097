"""``usdtkit list``: what can be probed in a file, a library or a running process.

Lists USDT probes (every call site, with its argument spec) and function symbols (uprobe targets), as an
aligned table or one JSON document.  Discovery only reads files (and keeps decoded function tables and
printed listings in the private cache, :mod:`usdtkit.cli.list_cache`): no root, no bcc, no kernel support.
Kept fast on purpose (libjvm's 58,000 functions in well under bpftrace's time): big symbol tables are
handled in columns and serialised without building one object per function, and a file listed before
is printed from the cache without being read.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
from itertools import islice, repeat
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from ..views.text import printable
from ..errors import ElfError, UsageError
from . import list_cache
from .list_cache import Fragment

DESCRIPTION = """\
List the USDT probes and the functions (uprobe targets) of TARGET, an ELF file or a library name
(libc, c, libstdc++, libpython3.11.so, resolved like the dynamic loader does), or of every ELF object
mapped by process PID (including deleted and memfd-backed objects, and files inside containers).

By default both USDT probes and functions are listed, like `bpftrace -l`; --usdt or --functions
restrict the listing to one kind.  PATTERN is a shell glob (*, ?, [...]) matched against
provider:name for probes (or against the name alone when PATTERN has no colon) and against the
function name for functions (and its demangled form with --demangle, without its parameter list
unless PATTERN has a '('), as the probe specs of trace, count, hist and latency match them."""

EPILOG = """\
examples:
  usdtkit list /usr/lib/postgresql/15/bin/postgres 'postgresql:checkpoint*'
  usdtkit list --usdt libc
  usdtkit list --functions libstdc++ '_ZNSt6thread*' --demangle
  usdtkit list -p PID 'hello:*'
  usdtkit list --json --usdt /usr/bin/python3.11

JSON: {"probes": [...], "functions": [...]} (only the kinds listed); a probe has provider, name,
binary, semaphore and locations (address, base, semaphore, arguments, file_offset, args, ...), plus
known_issues (one line each) when it is known to misfire in this build; a function has name, address,
size, file_offset, binding, ifunc, version, source, demangled, binary.  With -p, entries also carry pid
and open_path, and "objects" lists the mapped objects with their load bias.

What a listing prints for a file (and the functions of a file with a .symtab) is kept in usdtkit's
private cache folder (~/.cache/usdtkit/index, per file version: device, inode, size, mtime, ctime, and
per options), so listing it again is a stat, a read and a write; --demangle listings are not kept.
Entries of changed or removed files, unused for 30 days, or beyond 256 MB in all are removed.

(ifunc) in the table marks an indirect function (glibc's strlen, memcpy...): its symbol is a resolver
run once at load time to pick the implementation (__strlen_avx2...) that every call then goes to.
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
        self.issues: Dict[str, List[str]] = {}  # qualified probe name -> known issues in this object
        self.functions = None  # symbols.FunctionTable
        self.demangled: Optional[List[Optional[str]]] = None
        self.status = None  # the file version read (cache_store.Status)
        self.deps: tuple = ()  # other files read, with their status before (cache_store.snapshot)


class Part(NamedTuple):
    """One object of a listing and its fragment of the output."""

    display: str
    open_path: str
    obj: object  # MappedObject for -p listings
    fragment: Fragment


def _probe_filter(pattern: Optional[str]) -> Callable[[object], bool]:
    from ..elf.glob import compile_glob

    match = compile_glob(pattern)
    if match is None:
        return lambda probe: True
    if ":" in pattern:  # type: ignore[operator]
        return lambda probe: bool(match(probe.qualified_name))
    return lambda probe: bool(match(probe.qualified_name) or match(probe.name))


def _gather(display: str, open_path: str, args: argparse.Namespace, usdt: bool, functions: bool,
            obj=None) -> Listed:
    from ..elf.glob import compile_glob, demangled_matcher
    from ..elf.image import ElfImage
    from ..elf.index_cache import cached_function_table
    from ..elf.known_issues import issues_in_image
    from ..elf.notes import probes_from_image

    listed = Listed(display, open_path, obj)
    with ElfImage(open_path, display) as image:
        listed.status, listed.deps = _read_from(image, functions)
        if usdt:
            keep = _probe_filter(args.pattern)
            listed.probes = [p for p in probes_from_image(image, display) if keep(p)]
            for probe in listed.probes:
                issues = issues_in_image(image, probe.provider, probe.name)
                if issues:
                    listed.issues[probe.qualified_name] = issues
        if functions:
            listed.functions = cached_function_table(image)
            match = None if args.demangle else compile_glob(args.pattern)
            if match is not None:
                listed.functions = listed.functions.select(list(map(match, listed.functions.names)))
    if functions and args.demangle:
        from ..elf.demangle import demangle_names

        table = listed.functions
        pretty = demangle_names(table.names)
        demangled = list(map(pretty.get, table.names))
        if args.pattern is not None:
            match = demangled_matcher(args.pattern)
            keep_rows = [match(n, d) for n, d in zip(table.names, demangled)]
            table = table.select(keep_rows)
            demangled = [d for d, k in zip(demangled, keep_rows) if k]
        listed.functions = table
        listed.demangled = demangled
    return listed


def _read_from(image, functions: bool) -> Tuple[object, tuple]:
    """The status of ``image``'s file and of the other files its listing may read (a separate debug
    file, found by build-id when the file has no ``.symtab``), taken before reading them."""
    from ..elf import cache_store
    from ..elf.image import SHT_SYMTAB

    st = image.status()
    status = None if st is None else cache_store.file_status(st)
    if not functions or any(s.type == SHT_SYMTAB for s in image.sections):
        return status, ()
    from ..elf.debuginfo import build_id_debug_paths

    build_id = image.build_id()
    return status, cache_store.snapshot(build_id_debug_paths(build_id) if build_id else [])


def _fragment(display: str, open_path: str, args: argparse.Namespace, usdt: bool, functions: bool,
              obj=None) -> Fragment:
    """This object's part of the listing: from the cache when this file version was listed so before."""
    where = None
    if not args.demangle:  # demangled names depend on the installed c++filt, not only on the file
        options = ("json" if args.json else "table", usdt, functions, args.pattern, obj is not None)
        where = list_cache.slot(display, open_path, options)
        found = None if where is None else list_cache.load(where)
        if found is not None:
            return found
    listed = _gather(display, open_path, args, usdt, functions, obj)
    if args.json:
        fragment = _json_fragment(listed, usdt, functions)
    else:
        fragment = _table_fragment(listed, usdt, functions)
    if where is not None and listed.status is not None:
        list_cache.store(where, open_path, listed.status, fragment, listed.deps)
    return fragment


def _targets(args: argparse.Namespace) -> Iterator[Tuple[str, str, object]]:
    if args.pid is not None:
        from ..elf.process import process_objects

        for obj in process_objects(args.pid):
            yield obj.path, obj.open_path, obj
        return
    from ..elf.targets import resolve_target

    path = resolve_target(args.target)
    yield path, path, None


def _run(args: argparse.Namespace) -> int:
    if args.pid is not None:
        if args.target is not None and args.pattern is not None:
            raise UsageError("list: give either TARGET or -p PID, not both")
        args.pattern, args.target = args.target, None
    elif args.target is None:
        raise UsageError("list: name a TARGET (file or library) or a process with -p PID")
    usdt = args.usdt or not args.functions
    functions = args.functions or not args.usdt

    results: List[Part] = []
    warnings: List[str] = []
    for display, open_path, obj in _targets(args):
        try:
            results.append(Part(display, open_path, obj,
                                _fragment(display, open_path, args, usdt, functions, obj)))
        except ElfError as exc:
            if obj is None:
                raise
            warnings.append(str(exc))  # one bad object must not hide a process's others
    if args.pid is not None and not results:
        from ..errors import NoSuchProcess, TargetError

        if not os.path.exists(f"/proc/{args.pid}"):
            raise NoSuchProcess(args.pid, "exited while being listed")
        if not warnings:
            raise TargetError(f"pid {args.pid}: no ELF objects mapped (kernel thread or zombie?)")
    for warning in warnings:
        print(f"usdtkit: warning: {printable(warning)}", file=sys.stderr)
    out = sys.stdout
    if args.json:
        _write_json(out, results, usdt, functions, args.pid)
    else:
        if hasattr(out, "reconfigure"):
            out.reconfigure(errors="backslashreplace")
        _write_table(out, results, usdt, functions)
    out.flush()
    return 0


def run(args: argparse.Namespace) -> int:
    # A listing builds ~10 objects per function and frees nothing cyclic: the cyclic GC would only
    # rescan everything the program has imported, again and again (60 ms for libjvm).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(args)
    finally:
        if enabled:
            gc.enable()


# --------------------------------------------------------------------------- JSON
def _encoder() -> Callable[[str], str]:
    """What ``json.dumps`` uses for a str (``ensure_ascii=True``); json is imported on first use, as a
    listing printed from the cache needs none of it."""
    import json.encoder

    return json.encoder.encode_basestring_ascii


_CHUNK = 1024  # rows formatted per write: keeps the working set in cache
_JSON_BOOL = {False: "false", True: "true"}


def _json_value(value: Optional[str]) -> str:
    return "null" if value is None else _encoder()(value)


def function_json_chunks(table, binary: str, demangled=None, extra: str = "") -> Iterator[List[str]]:
    """JSON text of each function of ``table`` (the document ``FunctionSymbol.to_json`` gives), in chunks.

    Each row's fields after ``file_offset`` take few distinct values; they are formatted once per
    distinct combination, and the rows with one ``%`` each, a chunk at a time.
    """
    count = len(table)
    _encode = _encoder()
    binary_json = _encode(binary)
    sources = set(table.sources)
    if demangled is None and len(sources) <= 1:
        # The usual big table: one source, no demangling; only binding and version vary.
        rest = '"source": %s, "demangled": null, "binary": %s%s}' % (
            _encode(sources.pop()) if sources else '""', binary_json, extra)
        if table.versions is None:
            versions = repeat("null", count)
        else:
            as_json = {v: _json_value(v) for v in set(table.versions)}
            versions = map(as_json.__getitem__, table.versions)
        ifuncs = repeat("false", count) if table.ifuncs is None else map(_JSON_BOOL.__getitem__, table.ifuncs)
        rows = zip(map(_encode, table.names), table.addresses, table.sizes, table.offsets, table.bindings,
                   ifuncs, versions, repeat(rest, count))
        fmt = ('{"name": %s, "address": %d, "size": %d, "file_offset": %d, "binding": "%s", "ifunc": %s, '
               '"version": %s, %s'.__mod__)
    else:
        tail = '"binding": "%s", "ifunc": %s, "version": %s, "source": %s, "demangled": %s, "binary": %s%s}'
        versions = table.versions if table.versions is not None else repeat(None, count)
        dem = demangled if demangled is not None else repeat(None, count)
        ifunc_flags = table.ifuncs if table.ifuncs is not None else repeat(False, count)
        keys = list(zip(table.bindings, ifunc_flags, versions, table.sources, dem))
        tails = {
            k: tail % (k[0], _JSON_BOOL[k[1]], _json_value(k[2]), _encode(k[3]), _json_value(k[4]), binary_json,
                       extra)
            for k in set(keys)
        }
        rows = zip(map(_encode, table.names), table.addresses, table.sizes, table.offsets,
                   map(tails.__getitem__, keys))
        fmt = '{"name": %s, "address": %d, "size": %d, "file_offset": %d, %s'.__mod__
    while True:
        chunk = list(map(fmt, islice(rows, _CHUNK)))
        if not chunk:
            return
        yield chunk


def _json_fragment(listed: Listed, usdt: bool, functions: bool) -> Fragment:
    """The JSON rows of one object; in a process listing, each row ends with a hole for its pid and path."""
    import json

    hole = list_cache.HOLE if listed.obj is not None else ""
    probes = []
    if usdt:
        for probe in listed.probes:
            doc = probe.to_json()
            if probe.qualified_name in listed.issues:
                doc["known_issues"] = listed.issues[probe.qualified_name]
            row = json.dumps(doc)
            probes.append(row[:-1] + hole + "}" if hole else row)
    rows = ""
    if functions:
        rows = ",\n".join(",\n".join(chunk) for chunk in
                          function_json_chunks(listed.functions, listed.display, listed.demangled, hole))
    count = len(listed.functions) if functions else 0
    return Fragment(len(listed.probes), count, (",\n".join(probes).encode(), rows.encode()))


def _write_json(out, results: List[Part], usdt: bool, functions: bool, pid: Optional[int]) -> None:
    out.flush()
    buffer = getattr(out, "buffer", None)
    write = buffer.write if buffer is not None else lambda data: out.write(str(data, "ascii"))

    def rows(index: int) -> None:
        first = True
        for r in results:
            part = r.fragment.parts[index]
            if not len(part):
                continue
            if not first:
                write(b",\n")
            first = False
            if r.obj is not None:
                extra = ', "pid": %d, "open_path": %s' % (r.obj.pid, _encoder()(r.open_path))
                part = bytes(part).replace(list_cache.HOLE.encode(), extra.encode())
            write(part)

    write(b"{\n")
    if pid is not None:
        import json

        objects = ",\n".join(json.dumps(r.obj.to_json()) for r in results)
        write(('"pid": %d,\n"objects": [\n%s\n]' % (pid, objects)).encode())
    for index, (kind, wanted) in enumerate((("probes", usdt), ("functions", functions))):
        if not wanted:
            continue
        if pid is not None or index and usdt:
            write(b",\n")
        write(b'"%s": [\n' % kind.encode())
        rows(index)
        write(b"\n]")
    write(b"\n}\n")
    if buffer is not None:
        buffer.flush()


# --------------------------------------------------------------------------- table
# Probe names, argument specs, symbol names and paths are the file author's bytes: the table shows
# their control characters escaped (an ESC sequence would drive the terminal); JSON keeps them exact.
def _shown(names: List[str]) -> List[str]:
    """``names`` with control characters escaped (the common all-printable case costs one C-level pass)."""
    if all(map(str.isprintable, names)):
        return names
    return [n if n.isprintable() else printable(n) for n in names]


def _table_fragment(listed: Listed, usdt: bool, functions: bool) -> Fragment:
    """The table text of one object, with a hole where its header names it."""
    pieces: List[str] = []
    if usdt:
        _probe_table(pieces.append, list_cache.HOLE, listed.probes, listed.issues)
    if functions:
        if usdt:
            pieces.append("\n")
        _function_table(pieces.append, list_cache.HOLE, listed.functions, listed.demangled)
    count = len(listed.functions) if functions else 0
    return Fragment(len(listed.probes), count, ("".join(pieces).encode("utf-8", "surrogatepass"),))


def _write_table(out, results: List[Part], usdt: bool, functions: bool) -> None:
    write = out.write
    if results and results[0].obj is not None:
        # A process maps dozens of objects: show only those with something to list.
        pid = results[0].obj.pid
        results = [r for r in results if (usdt and r.fragment.probes) or (functions and r.fragment.functions)]
        if not results:
            write(f"pid {pid}: nothing to list\n")
    for n, r in enumerate(results):
        if n:
            write("\n")
        where = printable(r.display)
        if r.obj is not None and r.obj.load_bias is not None:
            where += f"  (pid {r.obj.pid}, load bias {r.obj.load_bias:#x})"
        write(str(r.fragment.parts[0], "utf-8", "surrogatepass").replace(list_cache.HOLE, where))


def _probe_table(write, where: str, probes: list, issues: Dict[str, List[str]]) -> None:
    sites = sum(len(p.locations) for p in probes)
    write(f"{where}: {len(probes)} USDT probe{'s' * (len(probes) != 1)}, {sites} call site{'s' * (sites != 1)}\n")
    if not probes:
        return
    names = _shown([p.qualified_name for p in probes])
    width = max(len("PROBE"), *map(len, names))
    write(f"  {'PROBE':<{width}}  SITES  SEMAPHORE  ARGUMENTS\n")
    for name, probe in zip(names, probes):
        first = printable(probe.locations[0].arguments) if probe.locations else ""
        variants = len({loc.arguments for loc in probe.locations}) - 1
        more = f"  (+{variants} other spec{'s' * (variants != 1)})" if variants else ""
        sem = f"{probe.semaphore:#x}" if probe.semaphore else "-"
        flag = "  (known issue, see note)" if probe.qualified_name in issues else ""
        write(f"  {name:<{width}}  {len(probe.locations):>5}  {sem:>9}  {first}{more}{flag}\n")
    for lines in issues.values():
        for line in lines:
            write(f"  note: {line}\n")


def _function_table(write, where: str, table, demangled) -> None:
    count = len(table)
    write(f"{where}: {count} function{'s' * (count != 1)}\n")
    if not count:
        return
    write(f"  {'ADDRESS':<16}  {'SIZE':>8}  {'BINDING':<7}  NAME\n")
    versions = table.versions or repeat(None, count)
    shown = _shown(table.names if demangled is None else [d or n for n, d in zip(table.names, demangled)])
    suffixes = ("" if v is None else "@" + printable(v) for v in versions)
    if table.ifuncs is not None:
        suffixes = (s + "  (ifunc)" if ifunc else s for s, ifunc in zip(suffixes, table.ifuncs))
    lines = map(
        "  %016x  %8d  %-7s  %s%s\n".__mod__,
        zip(table.addresses, table.sizes, table.bindings, shown, suffixes),
    )
    while True:
        chunk = "".join(islice(lines, _CHUNK))
        if not chunk:
            return
        write(chunk)
