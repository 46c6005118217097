"""Which functions are instrumented, decided once per code object.

A function is named ``module:qualname`` (``app.models:Order.save``, ``__main__:main``): the module is
the ``__name__`` of the globals its code runs in, the qualified name is the code's own
(``co_qualname``).

The default scope is the application's own code: the ``__main__`` module, and every module whose
file lies under the application's folder (the script's folder, or the current directory for
``-m MODULE``), except files of the standard library and of site-packages or dist-packages folders
(any folder of that name, so a virtual environment inside the application folder too).  ``include`` globs replace the
default scope: then exactly the functions whose name matches one of them are in scope.  ``exclude``
globs take out the functions whose name matches one.  Globs are shell-style (:mod:`fnmatch`,
case-sensitive) and ``*`` also matches ``.`` and ``:``, so ``app.*`` covers every function of app's
submodules and ``*:Order.*`` every method of classes named Order.  usdtkit's own code is never in
scope (the hooks would otherwise observe themselves).

Deciding takes microseconds (resolving a file's real path, matching globs), so the hooks ask once
per code object and keep the answer: a :class:`Decider` holds those answers for one tracing period.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from ..errors import UsageError
from ..provider import MAX_STRING_BYTES

# What the probes carry about a function: (module:qualname, file, first line), the strings encoded
# once here rather than at every firing.
Info = Tuple[bytes, bytes, int]

_OWN_FOLDER = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_LIBRARY_FOLDER_NAMES = frozenset(("site-packages", "dist-packages"))


def check_globs(globs: Iterable[str], option: str) -> Tuple[str, ...]:
    """``globs`` as a tuple, or :class:`UsageError` naming ``option`` for an empty or non-str one."""
    checked = tuple(globs)
    for glob in checked:
        if not isinstance(glob, str) or not glob.strip():
            raise UsageError(f"{option}: {glob!r} is not a glob on module:qualname (such as 'app.*')")
    return checked


def library_folders() -> Tuple[str, ...]:
    """The folders of installed code: the standard library and every site-packages/dist-packages."""
    import site
    import sysconfig

    found = {path for key, path in sysconfig.get_paths().items()
             if key in ("stdlib", "platstdlib", "purelib", "platlib")}
    found.update(getattr(site, "getsitepackages", lambda: [])())
    found.add(site.getusersitepackages())
    found.update(path for path in sys.path if os.path.basename(path.rstrip(os.sep)) in _LIBRARY_FOLDER_NAMES)
    return tuple(sorted({os.path.realpath(path) for path in found if path}))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class Scope:
    """The functions to instrument: see the module documentation."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = (),
                 root: Optional[str] = None) -> None:
        self.include = check_globs(include, "include")
        self.exclude = check_globs(exclude, "exclude")
        self._cwd = os.getcwd()
        self.root = os.path.realpath(root or self._cwd)
        # Found at the first decision, while traced: a program that is never traced does not pay.
        self._libraries: Optional[Tuple[str, ...]] = None
        self._match: Optional[Callable[[str, str], bool]] = None
        self._files: Dict[str, Tuple[bool, bool]] = {}  # co_filename -> (usdtkit's own, the app's)

    def covers(self, function: str, filename: str) -> bool:
        """Whether ``function`` (``module:qualname``), whose code comes from ``filename``, is in scope."""
        own, app = self._file(filename)
        if own:
            return False
        if self._match is None:
            from fnmatch import fnmatchcase

            self._match = fnmatchcase
        match = self._match
        if self.include:
            chosen = any(match(function, glob) for glob in self.include)
        else:
            chosen = app or function.startswith("__main__:")
        return chosen and not any(match(function, glob) for glob in self.exclude)

    def _file(self, filename: str) -> Tuple[bool, bool]:
        known = self._files.get(filename)
        if known is None:
            if filename.startswith("<") and filename.endswith(">"):  # <string>, <frozen ...>: no file
                known = (False, False)
            else:
                path = os.path.realpath(os.path.join(self._cwd, filename))
                own = _inside(path, _OWN_FOLDER)
                if self._libraries is None:
                    self._libraries = library_folders()
                library = (any(_inside(path, folder) for folder in self._libraries)
                           or not _LIBRARY_FOLDER_NAMES.isdisjoint(path.split(os.sep)))
                known = (own, _inside(path, self.root) and not library)
            self._files[filename] = known
        return known


def _encoded(text: str) -> bytes:
    # A probe's string argument is a C string of at most MAX_STRING_BYTES: no NUL; a lone surrogate
    # (possible in a file name) is replaced rather than refused.
    return text.replace("\0", "?").encode("utf-8", "replace")[:MAX_STRING_BYTES]


class Decider:
    """The hooks' answers for one tracing period: code object -> :data:`Info`, or None (out of scope).

    ``cache`` is read directly by the hooks (a dict lookup per event); :meth:`__call__` decides for a
    code object not in it yet and stores the answer.
    """

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.cache: Dict[Any, Optional[Info]] = {}

    def __call__(self, code: Any, namespace: Mapping[str, Any]) -> Optional[Info]:
        module = namespace.get("__name__")
        function = f"{module if isinstance(module, str) else '?'}:{code.co_qualname}"
        info: Optional[Info] = None
        if self.scope.covers(function, code.co_filename):
            info = (_encoded(function), _encoded(code.co_filename), code.co_firstlineno)
        self.cache[code] = info
        return info
