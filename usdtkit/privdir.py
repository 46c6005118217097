"""usdtkit's private cache: folders and files that only this user (or root) could have made.

usdtkit builds some things once and reuses them: the kernel header overlay bcc compiles against, the
demo's compiled service.  They live in a cache folder, ``$XDG_CACHE_HOME/usdtkit`` or
``~/.cache/usdtkit``, and whatever is later executed or compiled from there runs with the rights of
whoever runs usdtkit, usually root.  A cached file is only as trustworthy as everyone who could have
written it, so root must not use a cache it did not make itself:

* ``sudo -E`` keeps the invoking user's ``HOME`` and ``XDG_CACHE_HOME``, so root's "cache" is a folder
  that user owns; a binary planted there would run as root;
* anyone who can write a folder on the way can rename or replace an entry after it was checked;
* a symlink sends reads and writes anywhere (with ``fs.protected_symlinks=0`` even through a sticky
  ``/tmp``).

The rules here make a check stay true until the use.  Every folder from the cache root down is a real
folder (not a symlink) owned by the effective uid and writable by no one else; the folders above it are
owned by root or us and writable by no one else unless sticky (``/tmp``).  No one else can change such a
folder, so what was checked in it is still there when it is used.  A file to execute or compile against
is opened without following symlinks and checked on the open descriptor (:func:`open_trusted`), and run
from that descriptor (:func:`fd_exec_argv`).  New files appear whole or not at all (:func:`publish`).
When the cache root breaks the rules or cannot be made (read-only ``HOME``, another user's folder), a
per-user folder under the temp folder is used instead, under the same rules.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

from .errors import UnsafePath

T = TypeVar("T")

#: How a file to check is opened: never through a symlink, never blocking on a FIFO, never inherited.
_OPEN_CHECKED = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

#: Symlinks followed above a cache root before giving up (a loop or a path that keeps changing).
_MAX_LINK_DEPTH = 8

#: Run by :func:`fd_exec_argv`: execveat() of the descriptor; it is close-on-exec, so the program does
#: not inherit it, and the kernel names the process after the file, not after a /proc path.
_FD_EXEC = ("import os, sys; fd = int(sys.argv[1]); os.set_inheritable(fd, False); "
            "os.execve(fd, sys.argv[2:], os.environ)")

Rule = Callable[[os.stat_result], Optional[str]]


def cache_root() -> str:
    """usdtkit's usual cache folder (``$XDG_CACHE_HOME/usdtkit`` or ``~/.cache/usdtkit``), unchecked."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "usdtkit")


def fallback_root() -> str:
    """The per-user folder under the temp folder, used when :func:`cache_root` breaks the rules."""
    import tempfile  # imported when needed: a cache hit should not pay for it

    return os.path.join(tempfile.gettempdir(), f"usdtkit-{os.geteuid()}")


def describe(st: os.stat_result) -> str:
    """``a folder owned by uid 65534 with mode 0775``: what a refusal names."""
    mode = st.st_mode
    kind = ("symlink" if stat.S_ISLNK(mode) else "folder" if stat.S_ISDIR(mode)
            else "file" if stat.S_ISREG(mode) else "special file")
    return f"a {kind} owned by uid {st.st_uid} with mode {stat.S_IMODE(mode):04o}"


def _private_rule(st: os.stat_result) -> Optional[str]:
    """Folders from the cache root down: ours alone."""
    euid = os.geteuid()
    if stat.S_ISDIR(st.st_mode) and st.st_uid == euid and not st.st_mode & 0o022:
        return None
    return f"folders owned by uid {euid} that no one else can write"


def _trusted_rule(st: os.stat_result) -> Optional[str]:
    """Files to execute or compile against, and the folders holding them: root's or ours, written by no one else."""
    euid = os.geteuid()
    if ((stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)) and st.st_uid in (0, euid)
            and not st.st_mode & 0o022):
        return None
    return f"files and folders owned by uid {euid} or root that no one else can write"


def _ancestor_rule(st: os.stat_result) -> Optional[str]:
    """Folders above a cache root: root's or ours; others may write only a sticky one (they cannot
    rename or remove what is ours in it)."""
    if (stat.S_ISDIR(st.st_mode) and st.st_uid in (0, os.geteuid())
            and (not st.st_mode & 0o022 or st.st_mode & stat.S_ISVTX)):
        return None
    return "folders owned by root or this user that no one else can write (or sticky ones like /tmp)"


def _refuse(path: str, st: os.stat_result, expected: str) -> UnsafePath:
    return UnsafePath(f"{path} is {describe(st)}; usdtkit only uses {expected}")


def require_private(path: str, st: os.stat_result) -> None:
    """Raise :class:`UnsafePath` unless ``st`` (from ``lstat(path)``) is a folder only we can write."""
    problem = _private_rule(st)
    if problem is not None:
        raise _refuse(path, st, problem)


def _components(path: str) -> List[str]:
    """``/a/b`` -> ``['/', '/a', '/a/b']``."""
    parts = [p for p in path.split(os.sep) if p]
    return [os.sep] + [os.sep + os.sep.join(parts[:i + 1]) for i in range(len(parts))]


def _walk(path: str, strict_from: int, strict: Rule, create: bool = False, depth: int = 0) -> None:
    """Check every folder on the absolute, normalised ``path``, from ``/`` down.

    Components before index ``strict_from`` follow the ancestor rule (a symlink among them must be
    root's or ours and lead to folders that follow it too); the rest follow ``strict`` and are never
    symlinks.  With ``create``, missing folders are made with mode 0700 before they are checked.
    """
    for index, prefix in enumerate(_components(path)):
        try:
            st = os.lstat(prefix)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(prefix, 0o700)
            st = os.lstat(prefix)
        if index >= strict_from:
            problem = strict(st)
        elif stat.S_ISLNK(st.st_mode):
            problem = None if st.st_uid in (0, os.geteuid()) and depth < _MAX_LINK_DEPTH else (
                "symlinks owned by root or this user")
            if problem is None:
                _walk(os.path.realpath(prefix), sys.maxsize, strict, depth=depth + 1)
        else:
            problem = _ancestor_rule(st)
        if problem is not None:
            raise _refuse(prefix, st, problem)


def _plain_name(name: str) -> str:
    if not name or name in (".", "..") or os.sep in name or "\0" in name:
        raise ValueError(f"{name!r} is not a plain file name")
    return name


def _os_reason(exc: Exception) -> str:
    if isinstance(exc, UnsafePath):
        return exc.reason
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _make_private(root: str, parts: Sequence[str]) -> str:
    root = os.path.abspath(root)
    target = os.path.join(root, *parts)
    _walk(target, len(_components(os.path.dirname(root))), _private_rule, create=True)
    return target


def private_dir(*parts: str, root: Optional[str] = None) -> str:
    """The folder ``<cache root>/<parts...>``, created with mode 0700 and checked from ``/`` down.

    Without ``root``, the usual :func:`cache_root` is tried first and, if it breaks the rules or cannot
    be made, :func:`fallback_root`.  Raises :class:`UnsafePath` naming the path and the owner and mode
    found when no candidate is usable.
    """
    for part in parts:
        _plain_name(part)
    if root is not None:
        try:
            return _make_private(root, parts)
        except OSError as exc:
            raise UnsafePath(f"cannot make a private cache folder: {_os_reason(exc)}") from None
    reasons = []
    for root_of in (cache_root, fallback_root):  # the fallback is only looked up when needed
        try:
            return _make_private(root_of(), parts)
        except (OSError, UnsafePath) as exc:
            reasons.append(_os_reason(exc))
    raise UnsafePath(f"no usable private cache folder: {'; and '.join(reasons)}")


def _strict_from(folder: str, root: Optional[str]) -> int:
    """Index in ``_components(folder)`` of the cache root holding ``folder`` (none: past the end)."""
    roots = [root] if root is not None else [cache_root(), fallback_root()]
    for candidate in roots:
        candidate = os.path.abspath(candidate)
        if folder == candidate or folder.startswith(candidate + os.sep):
            return len(_components(os.path.dirname(candidate)))
    return sys.maxsize


def open_trusted(path: str, root: Optional[str] = None) -> int:
    """Open ``path`` (a file or folder) to execute or compile against, checked; the caller closes the fd.

    It must be a regular file or folder, not a symlink, owned by us or root and writable by no one
    else; so must every folder holding it up to the cache root (``root``, else the usual or fallback
    cache root that contains it), and the folders above follow the ancestor rule.  The check is made on
    the open descriptor, so what it describes is what the descriptor reads.  Raises
    :class:`UnsafePath`; a missing file raises :class:`FileNotFoundError`.
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    _walk(folder, _strict_from(folder, root), _trusted_rule)
    try:
        fd = os.open(path, _OPEN_CHECKED)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise _refuse(path, os.lstat(path), "files that are not symlinks") from None
        raise
    try:
        st = os.fstat(fd)
        problem = _trusted_rule(st)
        if problem is not None:
            raise _refuse(path, st, problem)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_trusted(path: str, root: Optional[str] = None) -> os.stat_result:
    """Check ``path`` as :func:`open_trusted` does and return its status (device and inode included)."""
    fd = open_trusted(path, root)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def fd_exec_argv(fd: int, argv: Sequence[str]) -> List[str]:
    """A command line that runs the file open at ``fd`` with arguments ``argv`` (``argv[0]`` included).

    What runs is the checked file itself, whatever its path names by then.  Start it with
    ``pass_fds=(fd,)``; the started program does not inherit the descriptor.
    """
    return [sys.executable, "-I", "-S", "-c", _FD_EXEC, str(fd), *argv]


def publish(directory: str, name: str, write: Callable[[int], None], mode: int = 0o600) -> str:
    """Write ``directory/name`` atomically: ``write(fd)`` fills a new temp file beside it, which is
    synced, given ``mode`` and renamed into place.  Readers see the old entry or the whole new file,
    never a part; an entry already there (even a symlink) is replaced, not written through.

    ``directory`` must be a private folder (see :func:`private_dir`).  Returns the final path.
    """
    _plain_name(name)
    require_private(directory, os.lstat(directory))
    final = os.path.join(directory, name)
    import secrets  # imported when needed: a cache hit should not pay for it

    temp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            write(fd)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)
    return final


def open_private(path: str, use: "Callable[[int, os.stat_result], T]") -> "Optional[Tuple[T, os.stat_result]]":
    """``use(fd, status)`` on the cache entry at ``path``, and its status, if only this user could have
    written it: a regular file (not a symlink) owned by this user with no group or world access, checked on
    the open descriptor; None if not, or if it cannot be read."""
    try:
        fd = os.open(path, _OPEN_CHECKED)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None
        return use(fd, st), st
    except OSError:
        return None
    finally:
        os.close(fd)


def read_all(fd: int, st: os.stat_result) -> bytes:
    """The whole file open at ``fd``: one read for a regular file, short reads joined if any."""
    chunks = [os.read(fd, st.st_size)]
    done = len(chunks[0])
    while done < st.st_size:
        chunk = os.read(fd, st.st_size - done)
        if not chunk:
            break  # shrank while read: damaged, the entry's own checksum says so
        chunks.append(chunk)
        done += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def mark_used(path: str, st: os.stat_result, every: float) -> None:
    """Set the entry's mtime to now (what :func:`prune` orders by) if it was last set more than ``every``
    seconds ago: no metadata write on every hit."""
    if time.time() - st.st_mtime > every:
        with contextlib.suppress(OSError):
            os.utime(path, follow_symlinks=False)


def publish_bytes(directory: str, name: str, data: bytes) -> str:
    """:func:`publish` of ``data`` as the whole file."""
    def write(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    return publish(directory, name, write)


#: Temp files older than this were left by a run that died while publishing.
STALE_TEMP = 3600


def prune(folder: str, judge: "Callable[[str], Optional[Tuple[bool, os.stat_result]]]", max_bytes: int,
          max_age: float, now: Optional[float] = None) -> List[str]:
    """Bound a cache folder: remove the entries ``judge`` says are stale (it returns ``(keep, stat)``, or
    None for a file that is not ours to judge), those unused (mtime) for ``max_age`` seconds and the least
    recently used beyond ``max_bytes`` in all, and temp files of dead publishers.  Returns the removed
    names."""
    now = time.time() if now is None else now
    removed: List[str] = []
    kept: List[Tuple[float, int, str]] = []
    for name in os.listdir(folder):
        full = os.path.join(folder, name)
        if name.startswith("."):
            with contextlib.suppress(OSError):
                if now - os.lstat(full).st_mtime > STALE_TEMP:
                    os.unlink(full)
                    removed.append(name)
            continue
        verdict = judge(full)
        if verdict is None:
            continue
        keep, st = verdict
        if not keep or now - st.st_mtime > max_age:
            with contextlib.suppress(OSError):
                os.unlink(full)
                removed.append(name)
        else:
            kept.append((st.st_mtime, st.st_size, name))
    total = sum(size for _, size, _ in kept)
    for _, size, name in sorted(kept):  # least recently used first
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
            removed.append(name)
        total -= size
    return removed
