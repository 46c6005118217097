"""The Python entry point for tracing: :func:`trace` builds a validated spec and returns a session.

    with usdtkit.trace("usdt:./app:demo:tick", count_by=["arg0"]) as t:
        t.run(duration=2)
    print(t.counts())

Everything a user passes is parsed here into typed values (probe refs, fields, predicates, histogram
specs) before any file is read or any C is generated.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Optional, Sequence, Union

from ..errors import NoSuchProcess, TargetError, UsageError
from .launch import GatedCommand
from .probes import ProbeRef, parse_probe
from .resolve import resolve, resolve_cache
from .session import EventCallback, Session
from .spec import Field, HistSpec, PairSpec, Predicate, TraceSpec

FieldLike = Union[str, Field]


def _fields(values: Optional[Iterable[FieldLike]]) -> Optional[tuple]:
    if values is None:
        return None
    if isinstance(values, (str, Field)):
        values = [values]
    return tuple(v if isinstance(v, Field) else Field.parse(v) for v in values)


def _strings(values: Iterable[Union[int, str]]) -> tuple:
    out = []
    for value in values:
        fld = Field.parse(value) if isinstance(value, str) else Field("arg", int(value))
        if fld.name != "arg":
            raise UsageError(f"strings: {value!r} is not an argument")
        out.append(fld.index)
    return tuple(out)


def check_process(pid: int) -> None:
    """Refuse a PID that names a thread, a kernel thread or a zombie, with what to do instead."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)
    except FileNotFoundError:
        raise NoSuchProcess(pid) from None
    except OSError as exc:
        raise TargetError(f"pid {pid}: cannot read its status: {exc.strerror}") from None
    tgid = status.get("Tgid", "").strip()
    if tgid and tgid != str(pid):
        raise UsageError(f"pid {pid} is a thread of process {tgid}: trace -p {tgid} (and filter on 'tid == {pid}')")
    try:
        with open(f"/proc/{pid}/maps") as maps:
            empty = not maps.read(1)
    except OSError:
        empty = False
    if empty:
        state = status.get("State", "").strip()
        what = "a zombie" if state.startswith("Z") else "a kernel thread"
        raise TargetError(f"pid {pid} has no address space ({what}): nothing to probe")


def build_spec(
    probes: Sequence[Union[str, ProbeRef]],
    pid: Optional[int] = None,
    filters: Iterable[Union[str, Predicate]] = (),
    events: bool = True,
    strings: Iterable[Union[int, str]] = (),
    string_size: int = 64,
    count_by: Optional[Iterable[FieldLike]] = None,
    hist: Optional[Union[str, Field, HistSpec]] = None,
    hist_by: Optional[FieldLike] = None,
    latency: bool = False,
    pair_keys: Optional[Sequence[Optional[FieldLike]]] = None,
    stacks: bool = False,
    ring_pages: int = 256,
    default_binary: Optional[str] = None,
    resolve_in_pid: bool = True,
    unsafe: bool = False,
) -> TraceSpec:
    """Parse, validate and resolve everything a trace needs.

    ``latency=True`` with one function (``uprobe:BIN:func``) times each call (entry to return, per
    thread, recursion-safe); with two USDT probes it times start to done, matched by thread or by the
    arguments named in ``pair_keys`` (e.g. ``("arg0", "arg0")``).  ``default_binary`` fills specs with
    an empty binary; ``resolve_in_pid=False`` resolves probes by path and uses ``pid`` only as a filter
    (for a command that has not exec'd yet).  ``unsafe=True`` allows uprobes at ``func+OFFSET`` or
    addresses that usdtkit cannot verify to start an instruction (a wrong one corrupts the target).
    """
    if isinstance(probes, (str, ProbeRef)):
        probes = [probes]
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
        raise UsageError(f"invalid pid {pid!r}")
    if pid is not None and resolve_in_pid:
        check_process(pid)
    refs = [p if isinstance(p, ProbeRef) else parse_probe(p) for p in probes]
    by_field = None if hist_by is None else (hist_by if isinstance(hist_by, Field) else Field.parse(hist_by))
    if isinstance(hist, HistSpec) and by_field is not None:
        raise UsageError("give hist_by inside the HistSpec (HistSpec(..., by=...)), not both")
    hist_spec = hist if isinstance(hist, HistSpec) or hist is None else HistSpec(
        hist if isinstance(hist, Field) else Field.parse(hist), by=by_field)
    if default_binary:
        refs = [replace(r, binary=default_binary) if not r.binary else r for r in refs]
    if not refs:
        raise UsageError("no probe given")
    pair = None
    if latency:
        if len(refs) == 1 and not refs[0].is_usdt:
            ref = refs[0]
            if ref.address is not None or ref.offset:
                raise UsageError(f"latency of {ref}: name a function, not an address or offset")
            refs = [ProbeRef("uprobe", ref.binary, ref.name), ProbeRef("uretprobe", ref.binary, ref.name)]
        elif len(refs) == 2 and all(r.is_usdt for r in refs):
            keys = list(pair_keys) if pair_keys is not None else [None, None]
            if len(keys) != 2:
                raise UsageError("pair_keys needs two fields: the start key and the done key")
            start_key, done_key = (None if k is None else (k if isinstance(k, Field) else Field.parse(k))
                                   for k in keys)
            if (start_key is None) != (done_key is None):
                raise UsageError("pair_keys: give both keys or neither")
            pair = PairSpec(0, 1, start_key, done_key)
        else:
            raise UsageError("latency needs one function (uprobe) or two USDT probes (start and done)")
    # Everything the user typed is validated before any file is read.
    predicates = tuple(f if isinstance(f, Predicate) else Predicate.parse(f) for f in filters)
    string_args = _strings(strings)
    count_fields = _fields(count_by)
    if count_fields and any(f.name == "ustack" for f in count_fields) and pid is None:
        if not any(f.name == "pid" for f in count_fields):
            count_fields = count_fields + (Field("pid"),)  # stacks are symbolised per process
    with resolve_cache():
        resolved = tuple(resolve(ref, pid if resolve_in_pid else None, unsafe) for ref in refs)
    return TraceSpec(
        probes=resolved,
        pid=pid,
        filters=predicates,
        events=events,
        event_strings=string_args,
        string_size=string_size,
        count_by=count_fields,
        hist=hist_spec,
        function_latency=latency and pair is None,
        pair=pair,
        stacks=stacks,
        ring_pages=ring_pages,
    )


def trace(*probes: Union[str, ProbeRef], on_event: Optional[EventCallback] = None,
          command: Optional[Sequence[str]] = None, command_stdout: Optional[int] = None,
          keep_events: Optional[int] = 1_000_000, **options: object) -> Session:
    """Build a trace of ``probes``; use the result as a context manager to attach and detach.

    Options are those of :func:`build_spec` (``pid``, ``filters``, ``events``, ``strings``,
    ``count_by``, ``hist``, ``latency``, ``pair_keys``, ``stacks``...).  ``command=[argv...]`` starts
    that program with the probes attached before its first instruction (probe specs may leave the
    binary empty); the session ends when it exits, and closing the session stops it (``command_stdout``:
    an fd for its output, ``subprocess.PIPE`` for ``session.command.process.stdout``).  ``keep_events``
    bounds the events kept in ``session.events`` (None: all, 0: none; ``on_event`` still sees them all).
    """
    if command is None:
        spec = build_spec(list(probes), **options)  # type: ignore[arg-type]
        return Session(spec, on_event=on_event, keep_events=keep_events)
    if options.get("pid") is not None:
        raise UsageError("give a command or a pid, not both")
    gated = GatedCommand([str(a) for a in command], stdout=command_stdout)
    try:
        spec = build_spec(list(probes), pid=gated.pid, default_binary=gated.executable,  # type: ignore[arg-type]
                          resolve_in_pid=False, **options)
        return Session(spec, on_event=on_event, keep_events=keep_events, command=gated)
    except BaseException:
        gated.stop()
        raise
