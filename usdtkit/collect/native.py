"""The optional C decoder of event records (``usdtkit._native._fastevents``), set up like the Python one.

:class:`~usdtkit.collect.records.RecordDecoder` turns one record into an :class:`Event` with a struct
unpack and a few Python statements per record, which caps a reader at a few hundred thousand events a
second.  The C module reads the ring buffer itself and, per record, either builds the same ``Event``
(handing it to the session's queue and ``on_event``) or writes the JSON line ``trace --json`` prints,
byte for byte, in large chunks to an fd.  :func:`native_decoder` describes the record layout to it;
where the module was not built (no Python headers), or ``USDTKIT_NO_NATIVE_EVENTS=1``, it returns
None and everything stays in Python.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from .records import RecordDecoder
from .results import Event


def _module() -> Optional[Any]:
    if os.environ.get("USDTKIT_NO_NATIVE_EVENTS") == "1":
        return None
    try:
        from .._native import _fastevents
    except ImportError:
        return None
    return _fastevents


def native_decoder(records: RecordDecoder) -> Optional[Any]:
    """A ``_fastevents.Decoder`` of the records ``records`` decodes, or None (no module, or a record
    shape beyond its limits)."""
    module = _module()
    if module is None:
        return None
    layout = records.layout
    offsets = dict(zip((m.name for m in layout.members), layout.offsets))
    strings = tuple(offsets[m.name] for m in layout.members if m.name.startswith("str"))
    if len(strings) > module.MAX_SLOTS or any(p.arg_count > module.MAX_ARGS for p in records.probes):
        return None
    probes = tuple((p.label, json.dumps(p.label, ensure_ascii=False).encode(), p.arg_count,
                    sum(1 << i for i in p.signed), tuple(p.string_slots), p.is_return, p.has_latency)
                   for p in records.probes)
    spec = {name: offsets[name] for name in ("ts", "latency", "retval", "pid", "tid", "probe", "cpu", "errs",
                                             "stack", "args", "comm")}
    spec.update(size=layout.size, comm_len=layout.member("comm").count, limit=records.string_size,
                str_len=layout.member("str0").count if strings else 0, strings=strings, probes=probes,
                event_type=Event, stack_of=records.stack_of)
    return module.Decoder(spec)
