"""The C decoder (``usdtkit._native._fastevents``) against the Python one, on every record shape.

Each record is packed as the kernel writes it (the layout's own ``pack``); the C decoder must build
the Event :class:`RecordDecoder` builds and write exactly the line ``trace --json`` writes from it.
"""
from __future__ import annotations

import itertools
import json
import random

import pytest

from usdtkit.bpf import codegen
from usdtkit.collect import native
from usdtkit.collect.records import ProbeDecoder, RecordDecoder
from usdtkit.elf.model import Arg, RegisterValue, Register
from usdtkit.plan.plan import AttachPlan
from usdtkit.plan.refs import ProbeRef
from usdtkit.plan.request import TraceRequest
from usdtkit.plan.resolve import ResolvedProbe, Site

fastevents = pytest.importorskip("usdtkit._native._fastevents")
STRING_SIZE = 24
U64 = (1 << 64) - 1


def record_layout(nargs: int, strings: tuple):
    args = tuple(Arg(8, False, RegisterValue(Register("rdi", 64, 0, "rdi")), "8@%rdi") for _ in range(nargs))
    probe = ResolvedProbe(ProbeRef("usdt", "/bin/x", "p", "prov"), "/bin/x", (Site("/bin/x", 0x10, 0x10, 0, args),),
                          nargs)
    request = TraceRequest((probe.ref,), events=True, event_strings=strings, string_size=STRING_SIZE)
    return codegen.generate(AttachPlan(request, (probe,), None)).record


def frames(stack_id: int, pid: int):
    if stack_id < 0:
        return None
    return (f"f{stack_id}+0x10 [lib\"x\\y.so]", "\u00e9t\u00e9\n[unknown]") if stack_id % 2 else ()


PROBES = [
    ProbeDecoder("prov:zero", 0, [], [], False, False),
    ProbeDecoder("prov:unsigned", 6, [False] * 6, [], False, False),
    ProbeDecoder("prov:signed \"q\" \u00e9", 6, [True, False, True, False, True, True], [], False, False),
    ProbeDecoder("prov:strings", 6, [False, True, False, False, False, False], [(0, 1), (1, 3)], False, False),
    ProbeDecoder("func:return", 1, [True], [], True, False),
    ProbeDecoder("prov:done", 3, [False, True, False], [(0, 2)], False, True),
    ProbeDecoder("fn:return", 2, [False, False], [(1, 0)], True, True),
]

TEXTS = [b"", b"plain", b'quo"te\\back\\slash', b"ctl\x01\x02\x1f\x7f\n\r\t\b\f", "\u00e9\u4e2d\U0001f600".encode(),
         b"bad \xff\xfe utf8 \xc3", b"x" * STRING_SIZE, b"y" * (STRING_SIZE + 1), b"\xe2\x82" + b"z" * 30,
         "a\u2028b".encode(), b"trail\xe2\x80"]
COMMS = [b"", b"comm", b"exactly15chars!", b"\xffbad\xc3(", b"t\"ab\\\t"]
NUMBERS = [0, 1, 42, (1 << 31) - 1, 1 << 31, (1 << 63) - 1, 1 << 63, U64, U64 - 41]


def pair(layout, stacks: bool, probes=PROBES):
    records = RecordDecoder(layout, probes, STRING_SIZE, frames if stacks else None)
    return records, native.native_decoder(records)


def cases(layout, nprobes: int, nstrings: int, count: int = 400):
    rng = random.Random(5)
    for n in range(count):
        values = dict(ts=rng.choice(NUMBERS), latency=rng.choice(NUMBERS), retval=rng.choice(NUMBERS),
                      pid=rng.choice([1, 4194304, (1 << 32) - 1]), tid=rng.randrange(1 << 32), probe=n % nprobes,
                      cpu=rng.randrange(1 << 32), errs=rng.choice([0, 0, 0, 1, 2, 5, 8, 0x3f, 0xffffffff]),
                      stack=rng.choice([-1, -14, 0, 3, 8]),
                      args=[rng.choice(NUMBERS) for _ in range(6)], comm=rng.choice(COMMS))
        for slot in range(nstrings):
            values[f"str{slot}"] = rng.choice(TEXTS)
        yield layout.pack(**values)


def python_line(event) -> bytes:
    return (json.dumps(event.to_json(), ensure_ascii=False) + "\n").encode()


@pytest.mark.parametrize("strings,stacks", [((), False), ((1, 3), False), ((1, 3), True), ((2, 0), True)])
def test_events_and_json_lines_match_the_python_decoder(strings, stacks):
    layout = record_layout(6, strings)
    probes = PROBES if strings else [p for p in PROBES if not p.string_slots]
    records, fast = pair(layout, stacks, probes)
    assert fast is not None
    for data in cases(layout, len(probes), len(strings)):
        expected = records.decode(data)
        assert fast.event(data) == expected
        assert fast.json(data) == python_line(expected)


def test_every_text_and_comm_and_error_mask_by_name():
    layout = record_layout(6, (1, 3))
    records, fast = pair(layout, True)
    for text, comm, errs in itertools.product(TEXTS, COMMS, [0, 2, 8, 10]):
        data = layout.pack(ts=1, pid=2, tid=3, probe=3, cpu=1, errs=errs, stack=1, args=[U64, 1 << 63, 0, 7, 8, 9],
                           comm=comm, str0=text, str1=text[::-1])
        expected = records.decode(data)
        assert fast.event(data) == expected
        assert fast.json(data) == python_line(expected)
    assert records.decode(layout.pack(probe=3, str0=b"y" * (STRING_SIZE + 1))).truncated == (1,)


def test_bad_records_are_errors_not_crashes():
    layout = record_layout(6, ())
    records, fast = pair(layout, False, PROBES[:2])
    with pytest.raises(ValueError, match="byte record"):
        fast.event(b"short")
    with pytest.raises(ValueError, match="probe 99"):
        fast.json(layout.pack(probe=99))


def test_absent_module_means_the_python_decoder(monkeypatch):
    monkeypatch.setenv("USDTKIT_NO_NATIVE_EVENTS", "1")
    layout = record_layout(1, ())
    assert native.native_decoder(RecordDecoder(layout, PROBES[:1], STRING_SIZE)) is None


def test_a_decoder_is_collected_with_the_session_whose_method_it_holds():
    import gc
    import weakref

    class Owner:
        def stack(self, stack_id, pid):
            return ()

    owner = Owner()
    owner.decoder = native.native_decoder(RecordDecoder(record_layout(1, ()), PROBES[:1], STRING_SIZE, owner.stack))
    gone = weakref.ref(owner)
    del owner
    gc.collect()
    assert gone() is None


def test_an_uninitialised_decoder_refuses_to_work():
    decoder = fastevents.Decoder.__new__(fastevents.Decoder)
    with pytest.raises(ValueError, match="not initialised"):
        decoder.json(b"\0" * 256)
