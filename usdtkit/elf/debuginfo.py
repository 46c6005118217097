"""Where the symbols of a stripped binary went: MiniDebugInfo and build-id debug files.

Distributions strip ``.symtab`` from the binaries they ship, which hides every ``static`` function.  Two
places may still have those symbols:

* **MiniDebugInfo** (Fedora, RHEL): the section ``.gnu_debugdata`` holds an xz-compressed ELF file whose
  ``.symtab`` lists the functions missing from ``.dynsym``.
* **Separate debug files** (Debian's ``-dbgsym`` packages, Fedora's ``debuginfo``): a copy of the ELF file
  without code but with every symbol, installed as ``/usr/lib/debug/.build-id/xx/yyyy.debug`` where
  ``xxyyyy`` is the hex *build-id* of the binary (its ``NT_GNU_BUILD_ID`` note), so it can be found from
  the binary alone.

Both keep link-time addresses; file offsets come from the main binary's segments.
"""
from __future__ import annotations

import lzma
import os
from typing import List, Optional, Sequence, Tuple

from ..errors import ElfError
from .image import SHT_NOBITS, ElfImage

#: Roots searched for ``.build-id/xx/yyyy.debug`` (like gdb's ``debug-file-directory``).
DEBUG_ROOTS: Tuple[str, ...] = ("/usr/lib/debug",)
#: Bound on the decompressed size of ``.gnu_debugdata`` (real ones are a few MB).
MAX_MINIDEBUGINFO = 256 << 20


def build_id_debug_paths(build_id: str, roots: Optional[Sequence[str]] = None) -> List[str]:
    """Where a separate debug file for ``build_id`` may be, under each of ``roots`` in turn."""
    if len(build_id) < 4:
        return []
    return [os.path.join(root, ".build-id", build_id[:2], build_id[2:] + ".debug")
            for root in (DEBUG_ROOTS if roots is None else roots)]


def build_id_debug_path(build_id: str, roots: Optional[Sequence[str]] = None) -> Optional[str]:
    """The path of the separate debug file for ``build_id`` under ``roots``, if one exists."""
    return next((path for path in build_id_debug_paths(build_id, roots) if os.path.isfile(path)), None)


def minidebuginfo(image: ElfImage) -> Optional[ElfImage]:
    """The ELF image embedded xz-compressed in ``.gnu_debugdata``, or None if there is none."""
    sec = image.section(".gnu_debugdata")
    if sec is None or sec.type == SHT_NOBITS or not sec.size:
        return None
    what = f"{image.display}: .gnu_debugdata"
    data = image.section_data(sec)
    try:
        dec = lzma.LZMADecompressor()
        inner = dec.decompress(data, max_length=MAX_MINIDEBUGINFO)
    except lzma.LZMAError as exc:
        raise ElfError(f"{what}: corrupt xz data ({exc})") from None
    if not dec.eof:
        raise ElfError(f"{what}: truncated xz data or larger than {MAX_MINIDEBUGINFO} bytes")
    return ElfImage.from_bytes(inner, what)


def debug_images(
    image: ElfImage, roots: Optional[Sequence[str]] = None, *, mini: bool = True
) -> List[Tuple[ElfImage, str]]:
    """Debug images standing in for ``image``'s missing ``.symtab``, with a source label each.

    The caller closes them.  ``mini=False`` skips MiniDebugInfo (it only holds functions).
    """
    out: List[Tuple[ElfImage, str]] = []
    if mini:
        inner = minidebuginfo(image)
        if inner is not None:
            out.append((inner, ".gnu_debugdata"))
    build_id = image.build_id()
    if build_id:
        path = build_id_debug_path(build_id, roots)
        if path is not None:
            try:
                out.append((ElfImage(path), path))
            except ElfError:
                for opened, _ in out:
                    opened.close()
                raise
    return out
