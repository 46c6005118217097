"""Counted stacks as flame graph input: folded lines and speedscope documents.

A count keyed by ``ustack`` holds, per key, the stack folded root first (``main;alpha;leaf``).  Every
other field of the key (the probe when several were traced, ``comm``, ``pid`` ...) becomes a frame below
the stack's root, so a flame graph splits by them first, as ``perf`` puts the command name at the root.

The *folded* format (one ``frame;frame;frame COUNT`` line per stack) is what flame graph tools read;
*speedscope* (https://www.speedscope.app/file-format-schema.json) reads a "sampled" profile: a shared
frame table, one list of frame indexes per sample and a weight per sample.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple

from ..collect.results import Counts
from ..errors import UsageError

Stack = Tuple[str, ...]  # frames, root first


def _prefix(field: str, value: object) -> str:
    if value is None:
        return f"{field}=?"
    return str(value) if field in ("probe", "comm") else f"{field}={value}"


def stacks_of(counts: Counts) -> Dict[Stack, int]:
    """Each counted key as a stack, root first; keys that fold to the same stack are added up.

    The probe is a frame only when several probes were counted."""
    fields = counts.fields
    if "ustack" not in fields:
        raise UsageError("a flame graph needs stacks: add ustack to --by (for example --by ustack)")
    where = fields.index("ustack")
    several_probes = len({key[0] for key in counts}) > 1
    out: Dict[Stack, int] = {}
    for key, count in counts.items():
        prefix = [_prefix(field, value) for i, (field, value) in enumerate(zip(fields, key))
                  if i != where and (i != 0 or several_probes)]
        folded = key[where]
        frames = str(folded).split(";") if folded else ["[no stack]"]
        stack = tuple(prefix + frames)
        out[stack] = out.get(stack, 0) + count
    return out


def _clean(frame: str) -> str:
    """A frame fit for a folded line: no ``;`` (the separator) and no line breaks."""
    return frame.replace(";", ":").replace("\n", " ").replace("\r", " ")


def folded_lines(stacks: Dict[Stack, int]) -> List[str]:
    """``frame;frame COUNT`` per stack, sorted by stack (the order flame graph tools expect)."""
    return [f"{';'.join(_clean(f) for f in stack)} {count}" for stack, count in sorted(stacks.items())]


def parse_folded(lines: Iterable[str]) -> Dict[Stack, int]:
    """The inverse of :func:`folded_lines` (blank lines skipped); counts of equal stacks are added."""
    out: Dict[Stack, int] = {}
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        text, _, count = line.rpartition(" ")
        if not text or not count.isdigit():
            raise UsageError(f"folded line {number}: expected 'frame;frame COUNT', got {line[:60]!r}")
        stack = tuple(text.split(";"))
        out[stack] = out.get(stack, 0) + int(count)
    return out


def speedscope(stacks: Dict[Stack, int], name: str, unit: str = "none") -> dict:
    """A speedscope "sampled" profile of ``stacks``; every distinct frame name is one shared frame."""
    index: Dict[str, int] = {}
    frames: List[dict] = []
    samples: List[Sequence[int]] = []
    weights: List[int] = []
    for stack, count in sorted(stacks.items()):
        row = []
        for frame in stack:
            if frame not in index:
                index[frame] = len(frames)
                frames.append({"name": frame})
            row.append(index[frame])
        samples.append(row)
        weights.append(count)
    total = sum(weights)
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "name": name, "unit": unit, "startValue": 0, "endValue": total,
                      "samples": samples, "weights": weights}],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "usdtkit",
    }
