"""Kernel headers for bcc's compiler, found or assembled without touching the system.

bcc compiles BPF C with clang against the running kernel's headers.  It looks for them in
``/lib/modules/$(uname -r)/build`` (or a tree named by ``BCC_KERNEL_SOURCE``, or the kernel's own
``/sys/kernel/kheaders.tar.xz``).  Many machines (cloud and VM kernels, containers) have no headers for
the running kernel, but Debian's ``linux-headers-amd64`` installs headers for its current kernel in two
halves:

* ``/usr/src/linux-headers-VER-common``: the architecture-independent tree (``include/``, ``arch/*/include``);
* ``/usr/src/linux-headers-VER-FLAVOUR``: the configured part (``include/generated``, ``include/config``,
  ``arch/x86/include/generated``, ``.config``).

Neither half compiles alone.  usdtkit overlays them into one tree of symlinks in its private cache
folder (``kernel-headers/`` under :func:`usdtkit.privdir.private_dir`), and sets ``BCC_KERNEL_SOURCE`` to
it only around its own compilations (:func:`bcc_environment`).  Root compiles against that tree, so a
tree found there is used only if it is exactly what usdtkit makes: folders ours alone, holding nothing
but symlinks into the two halves (themselves owned by root or us and writable by no one else).  Anything
else is moved aside and rebuilt.  Programs that read ``struct pt_regs`` (all uprobe programs) are
independent of the exact kernel version, so headers of another version work for what usdtkit compiles.
Nothing is ever written under ``/lib/modules``.
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import UnsafePath
from ..privdir import check_trusted, describe, private_dir, require_private

#: Files a usable tree must contain (relative to its root); checked for found and assembled trees.
_REQUIRED = ("include/linux/kconfig.h", "include/generated/autoconf.h")

_DEBIAN_ARCH = {"x86_64": ("amd64", "x86"), "aarch64": ("arm64", "arm64")}


@dataclass(frozen=True)
class KernelHeaders:
    """Where bcc will find kernel headers.

    ``kind`` is ``running`` (``/lib/modules/RELEASE/build``), ``env`` (``BCC_KERNEL_SOURCE`` set by the
    user), ``kheaders`` (the kernel's ``/sys/kernel/kheaders.tar.xz``) or ``overlay`` (assembled by
    usdtkit from Debian packages).  ``path`` is the tree, ``source_override`` the value usdtkit puts in
    ``BCC_KERNEL_SOURCE`` (None when bcc finds the headers by itself).
    """

    kind: str
    path: str
    source_override: Optional[str] = None
    detail: str = ""


class HeadersNotFound(Exception):
    """No kernel headers could be found or assembled; the message says what to install."""


def _is_complete(tree: str) -> bool:
    return all(os.path.exists(os.path.join(tree, rel)) for rel in _REQUIRED)


def _version_key(version: str) -> Tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.-]", version))


def find_debian_pairs(src_root: str = "/usr/src") -> List[Tuple[str, str, str]]:
    """Debian header halves under ``src_root`` as ``(version, common_dir, flavour_dir)``, newest first.

    Only flavours built for this machine's architecture (``amd64``, ``cloud-amd64``, ``arm64`` ...) are
    returned, the plain flavour before the others for one version.
    """
    deb_arch, _ = _DEBIAN_ARCH.get(platform.machine(), (platform.machine(), ""))
    try:
        names = os.listdir(src_root)
    except OSError:
        return []
    pattern = re.compile(r"^linux-headers-(\d+\.\d+[^-]*-\d+)-(?!common)([\w-]*" + re.escape(deb_arch) + r")$")
    pairs = []
    for name in names:
        match = pattern.match(name)
        if not match:
            continue
        version, flavour = match.groups()
        common = os.path.join(src_root, f"linux-headers-{version}-common")
        if flavour.startswith("rt-"):
            common = os.path.join(src_root, f"linux-headers-{version}-common-rt")
        if os.path.isdir(common):
            plain = 0 if flavour == deb_arch else 1
            pairs.append((version, plain, common, os.path.join(src_root, name)))
    pairs.sort(key=lambda p: (_version_key(p[0]), -p[1]), reverse=True)
    return [(v, c, f) for v, _, c, f in pairs]


def _merge(dst: str, sources: List[str]) -> None:
    """Fill ``dst`` with symlinks so it reads as the union of ``sources`` (later sources win)."""
    os.mkdir(dst, 0o700)
    entries: Dict[str, List[str]] = {}
    for src in sources:
        for name in sorted(os.listdir(src)):
            entries.setdefault(name, []).append(os.path.join(src, name))
    for name, paths in entries.items():
        target = os.path.join(dst, name)
        real_dirs = [p for p in paths if os.path.isdir(p) and not os.path.islink(p)]
        if len(paths) > 1 and len(real_dirs) == len(paths):
            _merge(target, paths)
        else:
            # The link names the entry in the package, so whatever it leads to further (Debian's
            # scripts -> ../../lib/linux-kbuild-*) is decided by the package's own, root-owned links.
            os.symlink(paths[-1], target)


def _foreign(tree: str, sources: Sequence[str]) -> Optional[str]:
    """Why ``tree`` is not an overlay of ``sources`` made by us (None when it is one)."""
    inside = tuple(source + os.sep for source in sources)
    pending = [tree]
    while pending:
        folder = pending.pop()
        try:
            require_private(folder, os.lstat(folder))
        except UnsafePath as exc:
            return exc.reason
        with os.scandir(folder) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    pending.append(entry.path)
                elif not stat.S_ISLNK(info.st_mode):
                    return f"{entry.path} is {describe(info)}, not a link into the headers"
                else:
                    target = os.readlink(entry.path)
                    if not target.startswith(inside) or os.path.normpath(target) != target:  # no "..", no "//"
                        return f"{entry.path} links to {target}, outside {' and '.join(sources)}"
    return None


def _usable(tree: str, sources: Sequence[str]) -> bool:
    return os.path.lexists(tree) and _foreign(tree, sources) is None and _is_complete(tree)


def assemble_overlay(common: str, flavour: str, cache: Optional[str] = None) -> str:
    """Build (once) the overlay of ``common`` and ``flavour`` in the private cache and return its path.

    ``cache`` names the cache root (no fallback then).  The tree is built in a temporary folder next to
    its final place and renamed into place, so a concurrent or interrupted build never leaves a half
    tree behind; a tree already there that is not exactly ours is moved aside and removed first.
    """
    sources = [os.path.realpath(common), os.path.realpath(flavour)]
    for source in sources:
        check_trusted(source)
    root = private_dir("kernel-headers", root=cache)
    final = os.path.join(root, os.path.basename(flavour))
    if _usable(final, sources):
        return final
    work = tempfile.mkdtemp(prefix=".build-", dir=root)
    try:
        _merge(os.path.join(work, "tree"), sources)
        with contextlib.suppress(FileNotFoundError):
            os.rename(final, os.path.join(work, "replaced"))  # stale, incomplete or foreign: removed below
        try:
            os.rename(os.path.join(work, "tree"), final)
        except OSError:
            if not _usable(final, sources):  # another process won the race with a good tree: fine
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not _usable(final, sources):
        raise HeadersNotFound(f"assembled header tree {final} is incomplete")
    return final


def locate(release: Optional[str] = None, src_root: str = "/usr/src", cache: Optional[str] = None) -> KernelHeaders:
    """Find kernel headers for bcc, assembling the Debian overlay when nothing better exists."""
    release = release or platform.release()
    user_tree = os.environ.get("BCC_KERNEL_SOURCE")
    if user_tree:
        return KernelHeaders("env", user_tree, None, "BCC_KERNEL_SOURCE set by the user")
    running = f"/lib/modules/{release}/build"
    if _is_complete(running):
        return KernelHeaders("running", os.path.realpath(running), None, f"headers of the running kernel {release}")
    pairs = find_debian_pairs(src_root)
    errors = []
    for version, common, flavour in pairs:
        try:
            tree = assemble_overlay(common, flavour, cache)
        except UnsafePath as exc:
            errors.append(f"{flavour}: {exc.reason}")
            continue
        except (OSError, HeadersNotFound) as exc:
            errors.append(f"{flavour}: {exc}")
            continue
        detail = f"overlay of {os.path.basename(common)} and {os.path.basename(flavour)}"
        if not release.startswith(version.split("-")[0] + "."):
            detail += f" (kernel {release}; fine for uprobe programs)"
        return KernelHeaders("overlay", tree, tree, detail)
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return KernelHeaders("kheaders", "/sys/kernel/kheaders.tar.xz", None, "the kernel's built-in headers")
    deb_arch = _DEBIAN_ARCH.get(platform.machine(), ("amd64",))[0]
    hint = f"install linux-headers-{release} or Debian's linux-headers-{deb_arch}"
    if errors:
        hint = "; ".join(errors) + f"; {hint}"
    raise HeadersNotFound(f"no kernel headers for {release}: {hint}")


@contextlib.contextmanager
def bcc_environment(headers: KernelHeaders) -> Iterator[None]:
    """Point bcc at ``headers`` for the duration of one compilation, then restore the environment."""
    if headers.source_override is None:
        yield
        return
    previous = os.environ.get("BCC_KERNEL_SOURCE")
    os.environ["BCC_KERNEL_SOURCE"] = headers.source_override
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = previous
