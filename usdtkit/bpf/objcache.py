"""A cache of compiled BPF programs, so a probe traced before attaches without compiling (or importing bcc).

bcc compiles a program's C with clang every time (0.2 s and more) and cannot load an object compiled
before.  What it hands the kernel is simple, though: per function, its instructions; per map, a
definition (type, key and value size, entries, flags, name).  Instructions refer to a map by a 64-bit
load whose source register says "map fd" (``BPF_PSEUDO_MAP_FD``) and whose immediate is the fd of a map
bcc created for this module.  :func:`capture` records all of that after a compilation, with the index of
every such load and which map it names; a later run creates the maps itself, writes their fds into
those loads and loads the programs (:mod:`.cached_program`).  Any other kind of fd or address in the
instructions makes the program uncachable (it is compiled every time).

The generated C holds no per-run value (see :mod:`.codegen`), so one entry serves every run of the same
probe shape.  An entry's name is the SHA-256 of everything that changes what bcc makes of the text: the
text, the compiler flags, the kernel (release and build: bcc compiles against its headers), bcc (its
version and the exact libbcc file) and this entry format.  A new kernel or bcc therefore misses and
compiles again.

Entries live in the private cache folder (``<cache root>/bpf``, see :mod:`usdtkit.privdir`) and are
trusted like the function-table cache's: a regular file of this user with no group or world access,
the right magic and a SHA-256 that matches, decoded with :mod:`marshal` only then.  Anything else is a
miss and the entry is replaced.  ``USDTKIT_NO_OBJCACHE=1`` turns the cache off.
"""
from __future__ import annotations

import ctypes
import marshal
import os
import re
import struct
import sys
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

#: Entry format; bump when the stored fields change.
FORMAT = 1
_MAGIC = b"USDTKIT-BPF-OBJECT\0"
_LD_IMM64 = 0x18
_PSEUDO_MAP_FD = 1
_LIBBCC = "libbcc.so.0"
_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
             "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/usr/local/lib", "/usr/local/lib64")
_INSN = struct.Struct("<BBhi")


_DIGEST = 32  # SHA-256


def _sha256(data: bytes) -> Any:
    """A SHA-256 hash object of ``data``, from CPython's own module where it has one: :mod:`hashlib` loads
    OpenSSL, which costs a warm start 4 ms."""
    for module in ("_sha2", "_sha256"):
        try:
            return getattr(__import__(module), "sha256")(data)
        except (ImportError, AttributeError):
            continue
    import hashlib

    return hashlib.sha256(data)


def _seal(payload: bytes) -> bytes:
    """An entry: the magic, the SHA-256 of ``payload``, then ``payload``."""
    return _MAGIC + _sha256(payload).digest() + payload


def _unseal(data: bytes) -> Optional[memoryview]:
    """The payload of an entry made by :func:`_seal`, or None when it is cut short, another kind of file,
    or not what was written (the checksum disagrees)."""
    head = len(_MAGIC) + _DIGEST
    if len(data) < head or not data.startswith(_MAGIC):
        return None
    payload = memoryview(data)[head:]
    return payload if _sha256(payload).digest() == data[len(_MAGIC):head] else None


class Table(NamedTuple):
    """A map as bcc created it (``map_type`` is the kernel's ``enum bpf_map_type``)."""

    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


class Function(NamedTuple):
    """One BPF function: its instructions and, per map load, ``(instruction index, table index)``."""

    name: str
    insns: bytes
    map_refs: Tuple[Tuple[int, int], ...]


class CompiledObject(NamedTuple):
    """Everything needed to load a compiled module again without its compiler."""

    license: str
    kern_version: int
    tables: Tuple[Table, ...]
    functions: Dict[str, Function]


def enabled() -> bool:
    """False when ``USDTKIT_NO_OBJCACHE`` is set (to anything but empty or ``0``)."""
    return os.environ.get("USDTKIT_NO_OBJCACHE", "") in ("", "0")


def _libbcc_path() -> Optional[str]:
    for folder in _LIB_DIRS:
        path = os.path.join(folder, _LIBBCC)
        if os.path.exists(path):
            return os.path.realpath(path)
    return None


def bcc_identity() -> Optional[str]:
    """bcc's version (from its Python package, found without importing it) and the exact libbcc file
    (path, size, mtime); None when either is not found: then nothing is cached."""
    version = None
    for entry in sys.path:
        try:
            with open(os.path.join(entry or ".", "bcc", "version.py")) as f:
                found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read())
        except OSError:
            continue
        version = found.group(1) if found else None
        break
    library = _libbcc_path()
    if version is None or library is None:
        return None
    st = os.stat(library)
    return f"{version} {library} {st.st_size} {st.st_mtime_ns}"


def cache_key(text: str, cflags: Sequence[str] = ()) -> Optional[str]:
    """The entry name for ``text`` compiled with ``cflags`` here, or None when bcc cannot be identified."""
    from .. import __version__

    bcc = bcc_identity()
    if bcc is None:
        return None
    uname = os.uname()
    parts = (FORMAT, __version__, text, tuple(cflags), uname.release, uname.version, uname.machine, bcc,
             os.environ.get("BCC_KERNEL_SOURCE", ""))
    return _sha256(repr(parts).encode()).hexdigest()


def status() -> Tuple[bool, str]:
    """Whether the cache can serve this machine, and a line saying where it is or why not."""
    if not enabled():
        return False, "off (USDTKIT_NO_OBJCACHE is set): every trace compiles with bcc"
    if bcc_identity() is None:
        return False, "bcc's version or libbcc.so.0 not found: programs are compiled every time"
    folder = _folder()
    if folder is None:
        return False, "no private cache folder: programs are compiled every time"
    count = sum(1 for name in os.listdir(folder) if not name.startswith("."))
    return True, f"{folder}: {count} compiled program{'s' if count != 1 else ''}; a probe traced before attaches without bcc"


# ------------------------------------------------------------------ capture (after a bcc compilation)
def _libbcc() -> ctypes.CDLL:
    lib = ctypes.CDLL(_LIBBCC)
    for name, restype, argtypes in (
        ("bpf_num_tables", ctypes.c_size_t, [ctypes.c_void_p]),
        ("bpf_table_name", ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_size_t]),
        ("bpf_table_fd_id", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t]),
        ("bpf_table_type_id", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t]),
        ("bpf_table_max_entries_id", ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_size_t]),
        ("bpf_table_flags_id", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t]),
        ("bpf_table_key_size_id", ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_size_t]),
        ("bpf_table_leaf_size_id", ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_size_t]),
        ("bpf_function_start", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
        ("bpf_function_size", ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_char_p]),
        ("bpf_module_license", ctypes.c_char_p, [ctypes.c_void_p]),
        ("bpf_module_kern_version", ctypes.c_uint, [ctypes.c_void_p]),
    ):
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


def map_references(insns: bytes, table_of_fd: Dict[int, int]) -> Optional[Tuple[Tuple[int, int], ...]]:
    """``(instruction index, table index)`` of every map-fd load in ``insns``; None when an instruction
    refers to anything else by fd or address (it could not be loaded again from the bytes alone)."""
    refs = []
    index, count = 0, len(insns) // 8
    while index < count:
        code, regs, _off, imm = _INSN.unpack_from(insns, index * 8)
        if code == _LD_IMM64:
            source = regs >> 4
            if source == _PSEUDO_MAP_FD and imm in table_of_fd:
                refs.append((index, table_of_fd[imm]))
            elif source != 0:
                return None
            index += 2  # a 64-bit load takes two instruction slots
            continue
        index += 1
    return tuple(refs)


def capture(module: int, functions: Sequence[str]) -> Optional[CompiledObject]:
    """What bcc compiled in ``module`` (a ``bpf_module`` pointer) for ``functions``; None if it cannot be
    loaded again from the bytes alone."""
    lib = _libbcc()
    tables, table_of_fd = [], {}
    for tid in range(lib.bpf_num_tables(module)):
        name = lib.bpf_table_name(module, tid)
        tables.append(Table((name or b"").decode(), lib.bpf_table_type_id(module, tid),
                            lib.bpf_table_key_size_id(module, tid), lib.bpf_table_leaf_size_id(module, tid),
                            lib.bpf_table_max_entries_id(module, tid), lib.bpf_table_flags_id(module, tid)))
        table_of_fd[lib.bpf_table_fd_id(module, tid)] = tid
    compiled = {}
    for name in functions:
        start = lib.bpf_function_start(module, name.encode())
        size = lib.bpf_function_size(module, name.encode())
        if not start or not size or size % 8:
            return None
        insns = ctypes.string_at(start, size)
        refs = map_references(insns, table_of_fd)
        if refs is None:
            return None
        compiled[name] = Function(name, insns, refs)
    return CompiledObject((lib.bpf_module_license(module) or b"GPL").decode(), lib.bpf_module_kern_version(module),
                          tuple(tables), compiled)


# ------------------------------------------------------------------ entries
def _folder() -> Optional[str]:
    from ..errors import UnsafePath
    from ..privdir import private_dir

    try:
        return private_dir("bpf")
    except UnsafePath:
        return None


def encode(key: str, obj: CompiledObject) -> bytes:
    tables = tuple((t.name, t.map_type, t.key_size, t.value_size, t.max_entries, t.flags) for t in obj.tables)
    functions = tuple((f.name, f.insns, f.map_refs) for f in obj.functions.values())
    return _seal(marshal.dumps((FORMAT, key, obj.license, obj.kern_version, tables, functions)))


def decode(data: bytes, key: str) -> Optional[CompiledObject]:
    """The object in entry ``data`` if it is whole, of this format and made for ``key``, else None."""
    payload = _unseal(data)
    if payload is None:
        return None
    try:
        fmt, stored_key, license, kern_version, raw_tables, raw_functions = marshal.loads(payload)
        if fmt != FORMAT or stored_key != key:
            return None
        tables = tuple(Table(str(name), *(int(v) for v in values)) for name, *values in raw_tables)
        functions = {}
        for name, insns, refs in raw_functions:
            if not isinstance(insns, bytes) or len(insns) % 8:
                return None
            checked = tuple((int(at), int(table)) for at, table in refs)
            if any(not 0 <= at < len(insns) // 8 or not 0 <= table < len(tables) for at, table in checked):
                return None
            functions[str(name)] = Function(str(name), insns, checked)
        return CompiledObject(str(license), int(kern_version), tables, functions)
    except (ValueError, EOFError, TypeError):
        return None


#: Bounds of the folder: entries unused this long go, and the least recently used beyond this size.
MAX_AGE = 30 * 24 * 3600
MAX_BYTES = 64 << 20
TOUCH_EVERY = 3600  # a hit marks its entry used (mtime) at most this often


def load(key: str) -> Optional[CompiledObject]:
    """The cached object under ``key``, or None (a miss: absent, foreign, damaged or stale); a hit marks
    its entry used, so the sweep keeps what is traced often."""
    from ..privdir import mark_used, open_private, read_all

    folder = _folder()
    if folder is None:
        return None
    path = os.path.join(folder, key)
    found = open_private(path, read_all)
    obj = None if found is None else decode(found[0], key)
    if obj is not None:
        mark_used(path, found[1], TOUCH_EVERY)  # type: ignore[index]
    return obj


def _judge(full: str) -> Optional[Tuple[bool, os.stat_result]]:
    """An entry of this user's is kept (until too old or too many); anything else is not ours to touch."""
    import stat

    try:
        st = os.lstat(full)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        return None
    return True, st


def store(key: str, obj: CompiledObject) -> None:
    """Publish ``obj`` under ``key`` (replacing what was there); a cache that cannot be written is skipped."""
    from ..errors import UnsafePath
    from ..privdir import publish_bytes

    folder = _folder()
    if folder is None:
        return
    try:
        publish_bytes(folder, key, encode(key, obj))
    except (OSError, UnsafePath):
        return
    from ..privdir import prune

    prune(folder, _judge, MAX_BYTES, MAX_AGE)
