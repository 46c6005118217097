"""Flame graphs as one self-contained, interactive SVG file.

A flame graph draws counted stacks as a tree of boxes: the root at the bottom, each frame's children
above it, each box as wide as the hits under it, siblings in name order (so equal paths merge and the
x axis means nothing but share).  The file needs no network: its script zooms into a frame on click
(its ancestors stay, full width, below it), resets on "Reset zoom" or Escape, highlights the frames
matching a regular expression ("Search", Ctrl-F) with the share of all hits they cover, and shows the
frame under the pointer in the bottom line.  Every box has a ``<title>`` (``NAME (N hits, P%)``) that
browsers show on hover and that tests read back.
"""
from __future__ import annotations

import re
import zlib
from typing import Dict, List, Tuple
from xml.sax.saxutils import escape, quoteattr

from .stacks import Stack

WIDTH = 1200          # pixels
FRAME_HEIGHT = 16
FONT_SIZE = 12
CHAR_WIDTH = 0.59     # of FONT_SIZE, for a proportional font's average glyph
SIDE = 10             # margin left and right
TOP = 58              # title, subtitle and buttons
BOTTOM = 30           # the details line
MIN_WIDTH = 0.1       # pixels: narrower frames are left out (counted in the subtitle)


class _Node:
    __slots__ = ("name", "total", "children")

    def __init__(self, name: str) -> None:
        self.name = name
        self.total = 0
        self.children: Dict[str, "_Node"] = {}


_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_safe(name: str) -> str:
    """``name`` without the characters XML 1.0 cannot hold (control bytes, undecodable bytes)."""
    return _XML_UNSAFE.sub("\ufffd", name)


def _tree(stacks: Dict[Stack, int]) -> _Node:
    root = _Node("all")
    for stack, count in stacks.items():
        if count <= 0:
            continue
        node = root
        node.total += count
        for frame in map(_xml_safe, stack):
            node = node.children.setdefault(frame, _Node(frame))
            node.total += count
    return root


def _size(node: _Node) -> int:
    """How many frames ``node`` and everything above it make."""
    count, pending = 0, [node]
    while pending:
        current = pending.pop()
        count += 1
        pending.extend(current.children.values())
    return count


def _color(name: str) -> str:
    """A warm colour fixed by the name, so a function keeps its colour across graphs."""
    h = zlib.crc32(name.encode())
    return f"rgb({205 + (h & 0xFF) * 50 // 255},{(h >> 8 & 0xFF) * 200 // 255},{(h >> 16 & 0xFF) * 55 // 255})"


def _label(name: str, width: float) -> str:
    fits = int((width - 6) / (FONT_SIZE * CHAR_WIDTH))
    if fits < 3:
        return ""
    return name if len(name) <= fits else name[:fits - 2] + ".."


def _share(count: int, total: int) -> str:
    return f"{100.0 * count / total:.2f}%" if total else "0%"


def render(stacks: Dict[Stack, int], title: str = "Flame graph", subtitle: str = "",
           unit: str = "hits") -> str:
    """The SVG text of a flame graph of ``stacks`` (frames root first, with their counts)."""
    root = _tree(stacks)
    total = root.total
    scale = (WIDTH - 2 * SIDE) / total if total else 0.0
    boxes: List[Tuple[_Node, int, int]] = []  # node, x in counts, depth
    omitted = 0
    depth_max = 0
    pending: List[Tuple[_Node, int, int]] = [(root, 0, 0)]
    while pending:
        node, x, depth = pending.pop()
        if node.total * scale < MIN_WIDTH:
            if total:
                omitted += _size(node)
            continue
        boxes.append((node, x, depth))
        depth_max = max(depth_max, depth)
        offset = x
        for name in sorted(node.children):
            child = node.children[name]
            pending.append((child, offset, depth + 1))
            offset += child.total
    height = TOP + (depth_max + 1) * FRAME_HEIGHT + BOTTOM
    notes = [subtitle] if subtitle else []
    if omitted:
        notes.append(f"{omitted} frame{'s' if omitted != 1 else ''} narrower than {MIN_WIDTH} px not drawn")
    out: List[str] = [
        '<?xml version="1.0" standalone="no"?>',
        f'<svg version="1.1" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" data-total="{total}" data-unit={quoteattr(unit)} '
        f'font-family="Verdana, sans-serif" font-size="{FONT_SIZE}">',
        f"<style>{_STYLE}</style>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#fdf6e8"/>',
        f'<text x="{WIDTH // 2}" y="22" text-anchor="middle" font-size="17">{escape(_xml_safe(title))}</text>',
        f'<text x="{WIDTH // 2}" y="40" text-anchor="middle" fill="#555">{escape(_xml_safe("; ".join(notes)))}</text>',
        f'<text id="unzoom" class="button" x="{SIDE}" y="22" visibility="hidden">Reset zoom</text>',
        f'<text id="search" class="button" x="{WIDTH - SIDE}" y="22" text-anchor="end">Search</text>',
        f'<text id="matched" x="{WIDTH - SIDE}" y="{height - 10}" text-anchor="end"></text>',
        f'<text id="details" x="{SIDE}" y="{height - 10}"> </text>',
        '<g id="frames">',
    ]
    for node, x, depth in sorted(boxes, key=lambda b: (b[2], b[1])):
        left = SIDE + x * scale
        width = node.total * scale
        y = TOP + (depth_max - depth) * FRAME_HEIGHT
        about = f"{node.name} ({node.total} {unit}, {_share(node.total, total)})"
        out.append(
            f'<g class="f" data-x="{x}" data-w="{node.total}" data-d="{depth}" data-n={quoteattr(node.name)}>'
            f"<title>{escape(about)}</title>"
            f'<rect x="{left:.2f}" y="{y}" width="{width:.2f}" height="{FRAME_HEIGHT - 1}" rx="2" '
            f'fill="{_color(node.name)}"/>'
            f'<text x="{left + 3:.2f}" y="{y + FRAME_HEIGHT - 4}">{escape(_label(node.name, width))}</text></g>')
    out += ["</g>", f"<script><![CDATA[{_script(total)}]]></script>", "</svg>", ""]
    return "\n".join(out)


def frames_of(svg_text: str) -> List[Tuple[str, int, int, int]]:
    """``(name, count, depth, x)`` of every frame drawn in an SVG made by :func:`render` (for tests and
    tools that read the file back)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(svg_text)
    out = []
    for g in root.iter("{http://www.w3.org/2000/svg}g"):
        if g.get("class") == "f":
            out.append((g.get("data-n") or "", int(g.get("data-w") or 0), int(g.get("data-d") or 0),
                        int(g.get("data-x") or 0)))
    return out


_STYLE = (".f text { pointer-events: none; fill: #000; } .f:hover rect { stroke: #000; stroke-width: 0.5; } "
          ".button { cursor: pointer; fill: #1a4f8b; } .button:hover { text-decoration: underline; }")


def _script(total: int) -> str:
    # Geometry is recomputed from each frame's data-x/-w/-d (in counts), so zooming never accumulates
    # rounding; labels are re-cut to the new widths with the same rule as the server side.
    return f"""
(function () {{
  var W = {WIDTH}, SIDE = {SIDE}, TOTAL = {total}, CHARW = {FONT_SIZE * CHAR_WIDTH};
  var svg = document.documentElement;
  var frames = Array.prototype.slice.call(document.querySelectorAll('g.f'));
  var details = document.getElementById('details'), matched = document.getElementById('matched');
  var unzoom = document.getElementById('unzoom'), search = document.getElementById('search');
  function num(g, k) {{ return +g.getAttribute('data-' + k); }}
  function cut(name, w) {{
    var fits = Math.floor((w - 6) / CHARW);
    if (fits < 3) return '';
    return name.length <= fits ? name : name.substring(0, fits - 2) + '..';
  }}
  function place(g, left, width) {{
    var r = g.querySelector('rect'), t = g.querySelector('text');
    g.style.display = '';
    r.setAttribute('x', left.toFixed(2)); r.setAttribute('width', width.toFixed(2));
    t.setAttribute('x', (left + 3).toFixed(2));
    t.textContent = cut(g.getAttribute('data-n'), width);
  }}
  function show(x0, w0, d0) {{
    var scale = (W - 2 * SIDE) / w0;
    frames.forEach(function (g) {{
      var x = num(g, 'x'), w = num(g, 'w'), d = num(g, 'd');
      if (d < d0) {{
        if (x <= x0 && x + w >= x0 + w0) place(g, SIDE, W - 2 * SIDE); else g.style.display = 'none';
      }} else if (x >= x0 && x + w <= x0 + w0 && w * scale >= 0.1) {{
        place(g, SIDE + (x - x0) * scale, w * scale);
      }} else {{
        g.style.display = 'none';
      }}
    }});
    unzoom.setAttribute('visibility', w0 < TOTAL || d0 > 0 ? 'visible' : 'hidden');
  }}
  function reset() {{ show(0, TOTAL, 0); }}
  frames.forEach(function (g) {{
    g.addEventListener('click', function () {{ show(num(g, 'x'), num(g, 'w'), num(g, 'd')); }});
    g.addEventListener('mouseover', function () {{ details.textContent = g.querySelector('title').textContent; }});
    g.addEventListener('mouseout', function () {{ details.textContent = ' '; }});
  }});
  unzoom.addEventListener('click', reset);
  var searching = false;
  function clearSearch() {{
    frames.forEach(function (g) {{
      var r = g.querySelector('rect');
      if (r.hasAttribute('data-fill')) {{ r.setAttribute('fill', r.getAttribute('data-fill')); r.removeAttribute('data-fill'); }}
    }});
    matched.textContent = ''; search.textContent = 'Search'; searching = false;
  }}
  function find() {{
    if (searching) {{ clearSearch(); return; }}
    var text = window.prompt('Search frames (regular expression)', '');
    if (!text) return;
    var re;
    try {{ re = new RegExp(text); }} catch (e) {{ window.alert('Not a regular expression: ' + e.message); return; }}
    var spans = [];
    frames.forEach(function (g) {{
      if (num(g, 'd') > 0 && re.test(g.getAttribute('data-n'))) {{
        var r = g.querySelector('rect');
        r.setAttribute('data-fill', r.getAttribute('fill')); r.setAttribute('fill', 'rgb(220,0,220)');
        spans.push([num(g, 'x'), num(g, 'x') + num(g, 'w')]);
      }}
    }});
    spans.sort(function (a, b) {{ return a[0] - b[0]; }});
    var covered = 0, end = -1;
    spans.forEach(function (s) {{
      if (s[0] >= end) {{ covered += s[1] - s[0]; end = s[1]; }}
      else if (s[1] > end) {{ covered += s[1] - end; end = s[1]; }}
    }});
    matched.textContent = 'Matched: ' + (TOTAL ? (100 * covered / TOTAL).toFixed(2) : '0') + '%';
    search.textContent = 'Reset search'; searching = true;
  }}
  search.addEventListener('click', find);
  window.addEventListener('keydown', function (e) {{
    if ((e.ctrlKey || e.metaKey) && e.key === 'f') {{ e.preventDefault(); find(); }}
    else if (e.key === 'Escape') {{ reset(); clearSearch(); }}
  }});
}})();
"""
