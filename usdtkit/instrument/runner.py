"""``python -m usdtkit.instrument [--include GLOB]... [--exclude GLOB]... (SCRIPT | -m MODULE) [ARGS...]``

Runs a program as ``python SCRIPT ARGS`` or ``python -m MODULE ARGS`` would, instrumented: the
program is the ``__main__`` module (``if __name__ == "__main__":`` runs, classes it defines pickle),
``sys.argv`` is what it would be (``[SCRIPT, ARGS...]``; for a module, its file then ARGS), and
``sys.path[0]`` is the script's folder (the current directory for a module), as :mod:`runpy` sets
them.  Its exceptions and exit status are its own.  Options end at the first word that is not one of
ours: everything after SCRIPT or MODULE goes to the program.

The programs it starts inherit ``USDTKIT_INSTRUMENT=1`` and the scope (``USDTKIT_INSTRUMENT_INCLUDE``,
``USDTKIT_INSTRUMENT_EXCLUDE``): a Python child that imports ``usdtkit.instrument.bootstrap`` is
instrumented the same way.
"""
from __future__ import annotations

import argparse
import builtins
import importlib.machinery
import importlib.util
import io
import os
import runpy
import sys
import traceback
import types
import zipfile
from typing import List, Optional, Sequence, Tuple

from ..errors import UsageError, UsdtkitError
from . import ENABLE_VARIABLE, EXCLUDE_VARIABLE, INCLUDE_VARIABLE, enable

PROG = "python -m usdtkit.instrument"
EPILOG = """\
examples:
  python -m usdtkit.instrument demo_apps/pyorders.py 20
  python -m usdtkit.instrument --include '__main__:*' --exclude '*:price' demo_apps/pyorders.py 20
  python -m usdtkit.instrument -m timeit 'sum(range(100))'
  usdtkit count -p PID --by 'str(arg0)' usdt::pycalls:function__return

Functions are named module:qualname (app.models:Order.save, __main__:main).  Without --include, the
program's own code is instrumented: __main__ and the modules under the script's folder (the current
directory with -m), not the standard library nor site-packages.  Nothing runs per call until a
tracer attaches to usdt::pycalls:function__entry or function__return.
"""

_VALUED = ("--include", "--exclude")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, usage=f"{PROG} [--include GLOB]... [--exclude GLOB]... (SCRIPT | -m MODULE) [ARGS...]",
        description="Run a Python program with its functions as USDT probes (pycalls:function__entry, "
                    "pycalls:function__return), free until traced.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--include", action="append", default=None, metavar="GLOB",
                        help="instrument the functions matching GLOB instead of the program's own code "
                             "(repeatable), e.g. 'app.*' or '__main__:*'")
    parser.add_argument("--exclude", action="append", default=None, metavar="GLOB",
                        help="do not instrument the functions matching GLOB (repeatable), e.g. '*:_*'")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run library module MODULE as a script")
    parser.add_argument("script", nargs="?", metavar="SCRIPT", help="the program to run")
    return parser


def split_argv(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Our options and the program (SCRIPT or -m MODULE), then the program's arguments."""
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in _VALUED:
            index += 2
            continue
        if word in ("-m", "--"):  # -m MODULE; -- SCRIPT
            index += 2
        elif word.startswith("-") and word != "-" and not word.startswith("-m"):
            index += 1  # --include=GLOB, --help, or an unknown option for argparse to refuse
            continue
        else:  # SCRIPT, or -mMODULE
            index += 1
        break
    return list(argv[:index]), list(argv[index:])


def _read_script(path: str) -> Optional[types.CodeType]:
    """A script file's code, read once (None for a folder or zip file, which runpy imports from)."""
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "__main__.py")):
            raise UsageError(f"can't find '__main__' module in {path!r}")
        return None
    try:
        if zipfile.is_zipfile(path):
            return None
        with io.open_code(os.path.abspath(path)) as source:
            text = source.read()
    except OSError as exc:
        raise UsageError(f"can't open file {path!r}: {exc.strerror or exc}") from exc
    return compile(text, os.path.abspath(path), "exec", dont_inherit=True)


def _check_module(name: str) -> None:
    """That ``python -m name`` would find something to run (a package runs its ``__main__``)."""
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = importlib.util.find_spec(f"{name}.__main__")
    except (ImportError, ValueError) as exc:
        raise UsageError(f"module {name!r}: {exc}") from exc
    if spec is None:
        raise UsageError(f"no module named {name!r}")


def _share_scope(include: Optional[List[str]], exclude: Optional[List[str]]) -> None:
    """Children started by the program inherit instrumentation and scope through the environment."""
    os.environ[ENABLE_VARIABLE] = "1"
    for variable, globs in ((INCLUDE_VARIABLE, include), (EXCLUDE_VARIABLE, exclude)):
        if globs is not None:
            os.environ[variable] = ",".join(globs)


def _run_code(code: types.CodeType) -> None:
    """Run a script as ``python path`` does: in a fresh ``__main__`` module, ``__file__`` absolute,
    ``sys.argv[0]`` as given (:func:`runpy.run_path` would set both to the same)."""
    filename = code.co_filename
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=filename, __cached__=None, __builtins__=builtins,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", filename))
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def main(argv: Optional[Sequence[str]] = None) -> int:
    own, program_args = split_argv(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own)
    if (args.module is None) == (args.script is None):
        parser.error("give one program to run: SCRIPT or -m MODULE")
    try:
        if args.module is not None:
            _check_module(args.module)
            root = os.getcwd()
        else:
            code = _read_script(args.script)
            script = os.path.abspath(args.script)
            root = script if os.path.isdir(script) else os.path.dirname(script)
        _share_scope(args.include, args.exclude)
        enable(args.include, args.exclude, root=root)
    except UsdtkitError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SyntaxError as exc:  # the program's own error, shown as python shows it: no traceback
        traceback.print_exception(type(exc), exc, None)
        return 1
    if args.module is not None:
        sys.argv = [args.module, *program_args]  # run_module puts the module's file first
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [args.script, *program_args]
        if code is not None:
            if not sys.flags.safe_path:
                sys.path[0] = os.path.dirname(code.co_filename)
            _run_code(code)
        else:  # a folder or zip file with a __main__.py: imported from it, as python itself does
            if sys.flags.safe_path:
                sys.path.insert(0, os.path.abspath(args.script))
            else:
                sys.path[0] = os.path.abspath(args.script)
            runpy._run_module_as_main("__main__", alter_argv=False)  # type: ignore[attr-defined]
    return 0
