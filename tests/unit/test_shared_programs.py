"""Probes whose entry functions would differ only in the probe index share one function, which learns the
index from the attach cookie of the site that fired; without cookies every probe keeps its own function.
Through the in-memory backend (no root); tests/integration/test_wildcards.py runs the same on real probes."""
from __future__ import annotations

import re

import pytest

from usdtkit.bpf import capabilities
from usdtkit.bpf.fake import FakeBackend
from usdtkit.elf.model import Arg, Register, RegisterValue
from usdtkit.plan.plan import AttachPlan
from usdtkit.plan.refs import ProbeRef
from usdtkit.plan.request import TraceRequest
from usdtkit.plan.resolve import ResolvedProbe, Site
from usdtkit.tracing.session import Session

SIGNED = Arg(4, True, RegisterValue(Register("rdi", 32, 0, "edi")), "-4@%edi")


def usdt(name: str, *offsets: int, args=()) -> ResolvedProbe:
    sites = tuple(Site("/bin/app", offset, offset, 0, args) for offset in offsets)
    return ResolvedProbe(ProbeRef("usdt", "/bin/app", name, "app"), "/bin/app", sites, len(args))


@pytest.fixture(params=["cookies", "no cookies"])
def cookies(request, monkeypatch) -> bool:
    if request.param == "no cookies":
        monkeypatch.setenv("USDTKIT_NO_BPF_COOKIE", "1")
    capabilities.detect.cache_clear()
    yield request.param == "cookies"
    capabilities.detect.cache_clear()


def test_one_function_serves_the_probes_of_one_shape_and_each_hit_counts_for_its_probe(cookies):
    probes = (usdt("start", 0x1000, 0x1100), usdt("done", 0x1010), usdt("fail", 0x1020, args=(SIGNED,)))
    plan = AttachPlan(TraceRequest(tuple(p.ref for p in probes), events=True), probes)
    backend = FakeBackend()
    session = Session(plan, backend=backend).attach()
    program = backend.program
    functions = re.findall(r"^int (usdtkit_\w+)\(", session.layout.text, re.M)
    if cookies:  # start and done read nothing: one function; fail reads its argument: its own
        assert functions == ["usdtkit_s0", "usdtkit_p2_g0"]
        assert session.layout.text.count("bpf_get_attach_cookie(ctx)") == 1
        assert sorted(program.cookies.values()) == [0, 0, 1]
    else:
        assert functions == ["usdtkit_p0_g0", "usdtkit_p1_g0", "usdtkit_p2_g0"]
        assert "bpf_get_attach_cookie" not in session.layout.text and not program.cookies
    for offset, hits in ((0x1000, 1), (0x1100, 2), (0x1010, 3), (0x1020, 4)):
        for _ in range(hits):
            program.hit_site("/bin/app", offset)
    assert {label: s.hits for label, s in session.stats().items()} == {"app:start": 3, "app:done": 3, "app:fail": 4}
    session.close()
    assert not program.attached and not program.cookies
