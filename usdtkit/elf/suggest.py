"""Near misses: the existing names closest to one that does not exist, for "did you mean ...?".

Candidates are ranked by :class:`difflib.SequenceMatcher`'s ratio, twice the characters the two names
share (in order) over their total length.  From 0.6 up the difference reads as a typo: ``strlne`` is
0.83 from ``strlen``, ``gret`` 0.89 from ``greet``, while ``malloc`` is 0.33 from ``free``.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Set

from .model import UsdtProbe

CUTOFF = 0.6


def close_names(wanted: str, names: Iterable[str], limit: int = 3) -> List[str]:
    """Up to ``limit`` names from ``names`` closest to ``wanted``, best first (none when nothing is near)."""
    import difflib  # only a probe that is not found needs it: not every start of a trace

    return difflib.get_close_matches(wanted, sorted(set(names)), n=limit, cutoff=CUTOFF)


def did_you_mean(choices: List[str]) -> str:
    """`` (did you mean a, b or c?)`` to append to a not-found message, or "" without choices."""
    if not choices:
        return ""
    listed = choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"
    return f" (did you mean {listed}?)"


def near_probes(provider: Optional[str], name: str, probes: Iterable[UsdtProbe], limit: int = 3) -> List[str]:
    """``provider:name`` of the probes a spec naming a missing probe may have meant, best first.

    With a provider: names close to ``name`` under that provider, then ``name`` under other providers;
    only when neither exists, the spellings closest to the whole ``provider:name``.  Without one: the
    probes whose name is close to ``name``.
    """
    by_name: Dict[str, Set[str]] = {}
    for probe in probes:
        by_name.setdefault(probe.name, set()).add(probe.provider)
    if provider is None:
        near = [f"{p}:{n}" for n in close_names(name, by_name, limit) for p in sorted(by_name[n])]
    else:
        own = [n for n, providers in by_name.items() if provider in providers]
        near = [f"{provider}:{n}" for n in close_names(name, own, limit)]
        near += [f"{p}:{name}" for p in sorted(by_name.get(name, ()))]
        if not near:
            qualified = [f"{p}:{n}" for n, providers in by_name.items() for p in providers]
            near = close_names(f"{provider}:{name}", qualified, limit)
    return near[:limit]
