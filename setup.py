"""Build hook: compiles native/ (our libstapsdt-ABI library) into usdtkit/_native/.

The library is not a Python extension module: it is a plain shared object with the SONAME
``libstapsdt.so`` that usdtkit preloads with RTLD_GLOBAL, so the PyPI ``stapsdt`` package finds it by
name.  We reuse setuptools' ``build_ext`` machinery only to get the compiler and the in-place (editable)
and wheel layouts right.
"""
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE_DIR = "native"
LIB_NAME = "libstapsdt.so"


LIB_EXTENSION = "usdtkit._native.libstapsdt"


class BuildNativeLibrary(build_ext):
    """Compile the native sources into ``usdtkit/_native/libstapsdt.so`` (and the optional fast-fire
    Python extension next to it)."""

    def get_ext_filename(self, ext_name: str) -> str:
        if not ext_name.endswith("libstapsdt"):
            return super().get_ext_filename(ext_name)
        package, _, _ = ext_name.rpartition(".")
        return os.path.join(*package.split("."), LIB_NAME)

    def get_export_symbols(self, ext):
        if ext.name == LIB_EXTENSION:  # plain C library: no PyInit_ symbol
            return []
        return super().get_export_symbols(ext)


def native_sources() -> list:
    return sorted(
        os.path.join(NATIVE_DIR, name)
        for name in os.listdir(NATIVE_DIR)
        if name.endswith(".c")
    )


SOURCES = native_sources()

setup(
    ext_modules=[
        Extension(
            LIB_EXTENSION,
            sources=SOURCES,
            include_dirs=[NATIVE_DIR],
            extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"],
            extra_link_args=["-Wl,-soname,libstapsdt.so", "-Wl,-z,noexecstack", "-Wl,-z,now"],
        ),
        # Optional: firing runtime probes in one C call.  Without it (no Python headers) usdtkit
        # fires through ctypes, with the same behaviour.
        Extension(
            "usdtkit._native._fastfire",
            sources=[os.path.join(NATIVE_DIR, "python", "fastfire.c")],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        ),
        # Optional: event records read from the ring buffer and decoded (to Event objects or JSON
        # lines) in C.  Without it usdtkit decodes them in Python, with the same results.
        Extension(
            "usdtkit._native._fastevents",
            sources=[os.path.join(NATIVE_DIR, "python", "fastevents.c")],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        ),
        # Python 3.11 only (3.12+ has sys.monitoring): usdtkit.instrument's profile function, set on
        # every thread.  Without it, usdtkit.instrument on 3.11 says what is missing.
        Extension(
            "usdtkit._native._profile",
            sources=[os.path.join(NATIVE_DIR, "python", "profile.c")],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        ),
    ],
    cmdclass={"build_ext": BuildNativeLibrary},
)
