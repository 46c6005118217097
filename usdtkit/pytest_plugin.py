"""pytest plugin (entry point ``pytest11``): trace real processes in tests and assert on their probes.

Fixtures (each cleans up every process and attachment it made, even when the test fails):

* ``usdtkit_trace(*probes, **options)``: attach a trace (options of :func:`usdtkit.trace`) and return
  the live :class:`~usdtkit.tracing.session.Session`;
* ``traced_process(argv, *probes, **options)``: start ``argv`` with the probes attached before its first
  instruction (probe specs may leave the binary empty: ``usdt::provider:name``; a runtime provider the
  process declares is attached when it loads it, before its first hit: :mod:`usdtkit.tracing.late`);
  returns an object with ``.process``, ``.pid``, ``.session`` and ``.expect(probe)``;
* ``provider_trace(provider, *names, **options)``: trace probes of a :class:`usdtkit.provider.Provider`
  loaded in the test's own process.

Assertions: ``usdtkit.testing.expect_probe(session, "prov:name").fired(times=3).with_args(...)``, also
available as the ``expect_probe`` fixture.

Markers and options: a test marked ``@pytest.mark.bpf`` (or using one of the fixtures above) needs
root (or CAP_BPF+CAP_PERFMON), bcc, kernel headers and the uprobe PMU.  Where those are missing it is
skipped with the reason, except under CI (``CI`` set), ``USDTKIT_REQUIRE_BPF=1`` or
``--usdtkit-require-bpf``: there it fails instead, so a green run always means real probes attached.
Processes started by ``traced_process``, and everything they start, end with their test and die with
the test process (see :mod:`usdtkit.tracing.launch`), so even a test killed by a timeout leaves none
behind; its probes go with it (they are file descriptors).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Iterator, List, Optional

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

    failure = doctor.first_tracing_failure()
    return None if failure is None else f"{failure.name}: {failure.detail} (fix: {failure.fix})"


_BPF_FIXTURES = ("usdtkit_trace", "traced_process", "provider_trace")


def _uses_bpf(item: "pytest.Item") -> bool:
    return item.get_closest_marker("bpf") is not None or any(
        name in getattr(item, "fixturenames", ()) for name in _BPF_FIXTURES)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: "pytest.Item", call: "pytest.CallInfo") -> Iterator[None]:
    """Where BPF is required, a BPF test that skips for any reason (a missing tool, a compiler, a
    check of its own) is reported as failed: a green CI run means every BPF test really ran."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and _uses_bpf(item) and bpf_required(item.config):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"BPF test skipped where BPF is required (CI/USDTKIT_REQUIRE_BPF): {reason}"


def pytest_runtest_setup(item: "pytest.Item") -> None:
    if not _uses_bpf(item):
        return
    reason = bpf_unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs BPF: {reason}")  # a failure where BPF is required: see makereport


# --------------------------------------------------------------------------- fixtures
class TracedProcess:
    """A process started under trace by the ``traced_process`` fixture (the session owns it)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.command = session.command

    @property
    def process(self) -> Any:
        return self.command.process

    @property
    def pid(self) -> int:
        return self.command.pid

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the process to exit, then deliver the events still in flight."""
        code = self.command.wait(timeout)
        self.session.run(duration=0.05)
        return code

    def expect(self, probe: str) -> Any:
        from .testing import expect_probe

        return expect_probe(self.session, probe)

    def stop(self) -> None:
        self.command.stop()


@pytest.fixture
def usdtkit_trace() -> Iterator[Callable[..., Any]]:
    """Factory: ``usdtkit_trace(*probes, **options)`` returns an attached session, detached after the test."""
    from .tracing.api import trace

    sessions: List[Any] = []

    def start(*probes: str, **options: Any) -> Any:
        session = trace(*probes, **options)
        session.attach()
        sessions.append(session)
        return session

    yield start
    for session in reversed(sessions):
        session.close()


@pytest.fixture
def traced_process() -> Iterator[Callable[..., TracedProcess]]:
    """Factory: ``traced_process(argv, *probes, **options)`` starts ``argv`` with the probes attached."""
    from .tracing.api import trace

    started: List[TracedProcess] = []

    def start(argv: List[str], *probes: str, stdout: Optional[int] = None, **options: Any) -> TracedProcess:
        session = trace(*probes, command=[str(a) for a in argv], command_stdout=stdout, **options)
        session.attach()  # releases the command; a failed attach stops it
        traced = TracedProcess(session)
        started.append(traced)
        return traced

    yield start
    for traced in reversed(started):
        traced.session.close()  # detaches and stops the command


@pytest.fixture
def provider_trace(usdtkit_trace: Callable[..., Any]) -> Callable[..., Any]:
    """Factory: ``provider_trace(provider, *probe_names, **options)`` traces probes of a provider loaded
    in this test's own process (all its probes when no name is given)."""

    def start(provider: Any, *names: str, **options: Any) -> Any:
        if not provider.loaded:
            provider.load()
        chosen = names or tuple(provider.probes)
        specs = [f"usdt::{provider.name}:{name}" for name in chosen]
        options.setdefault("events", True)
        return usdtkit_trace(*specs, pid=os.getpid(), **options)

    return start


@pytest.fixture
def expect_probe() -> Callable[..., Any]:
    """``expect_probe(session, "provider:name")``: chainable assertions (see :mod:`usdtkit.testing`)."""
    from .testing import expect_probe as expect

    return expect
