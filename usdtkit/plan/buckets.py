"""Histogram bucket numbering, shared by the code that fills buckets in the kernel and the code that
reads them back (one definition, so the two can never disagree).

* log2: bucket 0 holds the value 0, bucket ``k`` the values ``[2**(k-1), 2**k)`` (``k`` up to 64), and
  bucket :data:`LOG2_NEGATIVE` the negative values of signed fields.
* linear from ``low`` to ``high`` by ``step``: bucket 0 holds values below ``low``, bucket ``k`` the values
  ``[low+(k-1)*step, low+k*step)`` (the last one cut at ``high``), bucket ``linear_count+1`` the values
  from ``high`` on.
* fixed upper bounds ``b0 < b1 < ...`` (Prometheus' ``le``): bucket ``i`` holds the values ``<= b_i`` above
  ``b_(i-1)``, bucket ``len(bounds)`` the values above the last bound.
"""
from __future__ import annotations

import bisect
from typing import Sequence, Tuple

LOG2_NEGATIVE = 65
SUM_SLOT = 0xFFFFFFFF  # not a bucket: the key where a histogram that keeps its sum adds every value
MAX_SUMS = 4  # other fields a histogram can add up per key, in the slots below SUM_SLOT
MAX_LINEAR_BUCKETS = 4096
MAX_FIXED_BOUNDS = 64
_MIN = -(1 << 63)
_TOP = 1 << 64


def sum_slot(index: int) -> int:
    """The key slot where a histogram adds up its ``index``-th other field (``HistSpec.sums``): just
    below :data:`SUM_SLOT`, far above any bucket number."""
    if not 0 <= index < MAX_SUMS:
        raise ValueError(f"sum index {index} out of range")
    return SUM_SLOT - 1 - index


def linear_count(low: int, high: int, step: int) -> int:
    """Buckets between ``low`` and ``high`` (the last one may be partial)."""
    return -(-(high - low) // step)


def log2_bounds(index: int) -> Tuple[int, int]:
    if index == LOG2_NEGATIVE:
        return (_MIN, 0)
    return (0, 1) if index == 0 else (1 << (index - 1), 1 << index)


def linear_bounds(index: int, low: int, high: int, step: int) -> Tuple[int, int]:
    if index == 0:
        return (_MIN, low)
    if index > linear_count(low, high, step):
        return (high, _TOP)
    lo = low + (index - 1) * step
    return (lo, min(lo + step, high))


def log2_bucket(value: int) -> int:
    return LOG2_NEGATIVE if value < 0 else value.bit_length()


def linear_bucket(value: int, low: int, high: int, step: int) -> int:
    if value < low:
        return 0
    if value >= high:
        return linear_count(low, high, step) + 1
    return 1 + (value - low) // step


def fixed_bucket(value: int, bounds: Sequence[int]) -> int:
    return bisect.bisect_left(bounds, value)


def fixed_bounds(index: int, bounds: Sequence[int]) -> Tuple[int, int]:
    lo = _MIN if index == 0 else bounds[index - 1] + 1
    hi = _TOP if index >= len(bounds) else bounds[index] + 1
    return (lo, hi)
