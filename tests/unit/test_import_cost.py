"""`import usdtkit` stays lean: public names resolve on first use, the native library loads when needed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import usdtkit

ROOT = Path(__file__).resolve().parents[2]


def fresh(code: str) -> str:
    """Run ``code`` in a new interpreter on this checkout; its last line of output."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[-1]


def test_every_public_name_resolves_and_is_listed_by_dir() -> None:
    code = ("import usdtkit; unlisted = sorted(set(usdtkit.__all__) - set(dir(usdtkit))); "
            "print([n for n in usdtkit.__all__ if getattr(usdtkit, n, None) is None], unlisted)")
    assert fresh(code) == "[] []"
    assert usdtkit.Provider.__module__.startswith("usdtkit.provider")
    assert usdtkit.read_functions.__module__.startswith("usdtkit.elf")


def test_import_loads_neither_ctypes_nor_the_native_library_nor_other_modules() -> None:
    code = ("import sys, usdtkit; maps = open('/proc/self/maps').read(); "
            "print('ctypes' in sys.modules, 'libstapsdt' in maps, "
            "sorted(m for m in sys.modules if m.startswith('usdtkit')))")
    assert fresh(code) == "False False ['usdtkit', 'usdtkit.errors']"


def test_the_pypi_stapsdt_package_still_finds_our_library_after_import_usdtkit() -> None:
    """``stapsdt`` opens "libstapsdt.so" by bare name at import; there is none installed system-wide here,
    so the import succeeds only if usdtkit opened its own copy first."""
    code = ("import usdtkit, stapsdt; from usdtkit._native import library_path; "
            "maps = [l.split()[-1] for l in open('/proc/self/maps') if 'libstapsdt' in l]; "
            "print(sorted(set(maps)) == [library_path()], hasattr(stapsdt, 'Provider'))")
    assert fresh(code) == "True True"


def test_a_command_of_a_shared_module_builds_that_module_alone() -> None:
    """count, hist and latency live in cmd_trace: building their parser imports no other command."""
    code = ("import sys; from usdtkit.cli.main import build_parser; "
            "[build_parser(c).parse_args([c, 'usdt:/bin/true:a:b']) for c in ('count', 'hist', 'latency')]; "
            "print(sorted(m for m in sys.modules if m.startswith('usdtkit.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == str(["usdtkit.cli.cmd_trace", "usdtkit.cli.examples", "usdtkit.cli.main",
                                               "usdtkit.cli.pictures"])
