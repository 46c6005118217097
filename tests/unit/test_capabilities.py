"""Capabilities are detected once: the environment switches are read by detect(), not on every access."""
from __future__ import annotations

import pytest

from usdtkit.bpf import capabilities


@pytest.fixture
def fresh_detect():
    capabilities.detect.cache_clear()
    yield capabilities.detect
    capabilities.detect.cache_clear()


@pytest.mark.parametrize("variable, name", [("USDTKIT_NO_RINGBUF", "has_ringbuf"),
                                            ("USDTKIT_NO_UPROBE_MULTI", "has_uprobe_multi"),
                                            ("USDTKIT_NO_BPF_COOKIE", "has_bpf_cookie")])
def test_switches_are_read_once_by_detect(fresh_detect, monkeypatch, variable, name):
    monkeypatch.delenv(variable, raising=False)
    caps = fresh_detect()
    expected = getattr(caps, name)
    monkeypatch.setenv(variable, "1")
    assert getattr(caps, name) == expected  # a later change of the environment does not flip it
    fresh_detect.cache_clear()
    assert getattr(fresh_detect(), name) is False  # the next detection sees it
