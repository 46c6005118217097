"""pytest plugin (entry point ``pytest11``): the ``bpf`` marker and the policy for tests that need BPF.

A test marked ``@pytest.mark.bpf`` needs root (or CAP_BPF+CAP_PERFMON), bcc, kernel headers and the
uprobe PMU.  Where those are missing it is skipped with the reason, except under CI (``CI`` set),
``USDTKIT_REQUIRE_BPF=1`` or ``--usdtkit-require-bpf``: there it fails instead, so a green run always
means real probes were attached.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import pytest


def pytest_addoption(parser: "pytest.Parser") -> None:
    group = parser.getgroup("usdtkit")
    group.addoption(
        "--usdtkit-require-bpf",
        action="store_true",
        default=False,
        help="fail (instead of skip) tests marked bpf when tracing is impossible here",
    )


def pytest_configure(config: "pytest.Config") -> None:
    config.addinivalue_line(
        "markers",
        "bpf: needs root, bcc and a kernel that can attach uprobes (fails instead of skipping under CI)",
    )


def _truthy(value: Optional[str]) -> bool:
    return bool(value) and value.strip().lower() not in ("0", "false", "no", "")


def bpf_required(config: "pytest.Config") -> bool:
    """Whether a BPF test that cannot run must fail rather than skip."""
    return (
        config.getoption("--usdtkit-require-bpf", default=False)
        or _truthy(os.environ.get("CI"))
        or _truthy(os.environ.get("USDTKIT_REQUIRE_BPF"))
    )


@functools.lru_cache(maxsize=None)
def bpf_unavailable_reason() -> Optional[str]:
    """None when tracing works here, else the first failing ``usdtkit doctor`` line."""
    from . import doctor

    for check in (doctor.check_privileges, doctor.check_bcc, doctor.check_headers, doctor.check_uprobe_pmu):
        result = check()
        if result.status == doctor.FAIL:
            return f"{result.name}: {result.detail} (fix: {result.fix})"
    return None


def pytest_runtest_setup(item: "pytest.Item") -> None:
    if item.get_closest_marker("bpf") is None:
        return
    reason = bpf_unavailable_reason()
    if reason is None:
        return
    if bpf_required(item.config):
        pytest.fail(f"BPF required (CI/USDTKIT_REQUIRE_BPF/--usdtkit-require-bpf) but unavailable: {reason}",
                    pytrace=False)
    pytest.skip(f"needs BPF: {reason}")
