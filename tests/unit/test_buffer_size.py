"""``--buffer-size`` / ``buffer_size=``: sizes as the kernel takes them, bad ones as one clear error."""
from __future__ import annotations

import pytest

from usdtkit.errors import UsageError
from usdtkit.plan.buffer_size import DEFAULT_RING_PAGES, PAGE_SIZE, parse_size, ring_pages
from usdtkit.plan.request import make_request

PROBE = "usdt:/bin/true:a:b"


@pytest.mark.parametrize("text,size", [("4096", 4096), ("64M", 64 << 20), ("64m", 64 << 20), ("2K", 2048),
                                       ("1G", 1 << 30), ("16MiB", 16 << 20), (" 8 MB ", 8 << 20), (12288, 12288)])
def test_sizes_parse_with_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("size,pages", [(1, 1), (PAGE_SIZE, 1), (PAGE_SIZE + 1, 2), (3 * PAGE_SIZE, 4),
                                        ("64M", (64 << 20) // PAGE_SIZE), ("1G", (1 << 30) // PAGE_SIZE)])
def test_pages_are_rounded_up_to_a_power_of_two(size, pages):
    assert ring_pages(size) == pages


@pytest.mark.parametrize("text,message", [("12Q", "not a size"), ("-5M", "not a size"), ("", "not a size"),
                                          ("1.5M", "not a size"), ("0", "must be positive"),
                                          ("2G", "more than the 1 GiB"), (True, "not a size")])
def test_bad_sizes_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message):
        ring_pages(text)


def test_the_request_takes_a_buffer_size_or_pages_not_both():
    assert make_request([PROBE]).ring_pages == DEFAULT_RING_PAGES == (64 << 20) // PAGE_SIZE
    assert make_request([PROBE], buffer_size="256M").ring_pages == (256 << 20) // PAGE_SIZE
    with pytest.raises(UsageError, match="not both"):
        make_request([PROBE], buffer_size="1M", ring_pages=8)
    with pytest.raises(UsageError, match="buffer_size= applies to events"):
        make_request([PROBE], events=False, buffer_size="1M")
