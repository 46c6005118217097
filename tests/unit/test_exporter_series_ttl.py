"""Counter series whose value stopped changing are forgotten after series_ttl, in the kernel map too, so an
exporter whose label values churn (request ids, pids) keeps its memory flat.  The kernel is played by the
in-memory backend; tests/integration/test_exporter.py runs the same against real probes."""
from __future__ import annotations

import threading
from dataclasses import replace

from usdtkit.bpf.fake import FakeBackend
from usdtkit.elf.model import Arg, Register, RegisterValue
from usdtkit.expr.fields import Field
from usdtkit.exporter.collector import ExporterCollector, MetricState
from usdtkit.exporter.metrics import MetricSpec
from usdtkit.plan.plan import AttachPlan
from usdtkit.plan.refs import ProbeRef
from usdtkit.plan.request import TraceRequest
from usdtkit.plan.resolve import ResolvedProbe, Site
from usdtkit.tracing.session import Session


def session_counting_by_arg0():
    arg = Arg(8, False, RegisterValue(Register("rdi", 64, 0, "rdi")), "8@%rdi")
    probe = ResolvedProbe(ProbeRef("usdt", "/bin/app", "done", "app"), "/bin/app", (Site("/bin/app", 16, 16, 0, (arg,)),), 1)
    backend = FakeBackend()
    session = Session(AttachPlan(TraceRequest((probe.ref,), count_by=(Field("arg", 0),)), (probe,)),
                      backend=backend).attach()
    return session, backend.program


def test_unchanged_series_are_forgotten_and_changing_ones_kept():
    session, program = session_counting_by_arg0()
    layout = program.layout.count_key
    now = [100.0]
    spec = MetricSpec(name="requests", type="counter", probes=("usdt:/bin/app:app:done",),
                      labels=(("id", "arg0"),))
    spec = replace(spec, series_ttl=60)
    state = MetricState(spec, session, True)
    collector = ExporterCollector(lambda: [state], threading.Lock(), clock=lambda: now[0])

    def exposed():
        family = next(m for m in collector.collect() if m.name == "requests")
        return {s.labels["id"]: s.value for s in family.samples if s.name == "requests_total"}

    for i in range(5):
        program.add("counts", layout.pack(probe=0, k_arg0=i), 1)
    assert exposed() == {str(i): 1.0 for i in range(5)}
    now[0] += 30
    program.add("counts", layout.pack(probe=0, k_arg0=4), 1)  # id 4 keeps counting
    assert exposed()["4"] == 2.0
    now[0] += 40  # 70 s since ids 0-3 last changed, 40 s since id 4 did
    assert exposed() == {"4": 2.0}
    assert len(program.maps["counts"]) == 1  # gone from the kernel map as well
    forgotten = next(m for m in collector.collect() if m.name == "usdtkit_exporter_series_forgotten")
    assert forgotten.samples[0].value == 4.0
