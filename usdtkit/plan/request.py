"""What the user asked for, before anything is resolved: a :class:`TraceRequest`.

A request names probes by reference (:class:`~usdtkit.plan.refs.ProbeRef`), the target (a process, a
command being started, or the whole system), filters, the collectors (events, counts, histograms,
latency) and their options, all as validated values.  It reads no file and knows no call site, so it
can be resolved again at any time (:func:`usdtkit.plan.plan.make_plan`): after a restart, for new
processes, on reload.  Every option that would have no effect is refused here, by name.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence, Tuple, Union

from ..errors import UsageError
from ..expr.fields import MAX_ARGS, Field
from ..expr.filters import Filter
from . import buckets
from .buffer_size import DEFAULT_RING_PAGES, ring_pages as buffer_pages
from .refs import ProbeRef, parse_probe

DEFAULT_STRING_SIZE = 128
MIN_STRING_SIZE = 8
MAX_STRING_SIZE = 256
MAX_EVENT_STRINGS = 4
MAX_PAIR_KEY_FIELDS = 4
PAIR_KEY_NAMES = ("arg", "pid", "tid", "cpu")
DEFAULT_MAX_PROBES = 512  # bpftrace's default (BPFTRACE_MAX_PROBES): a pattern matching more is refused
SUMMABLE = ("arg", "retval", "latency")  # numbers a histogram can add up per key besides its own field

FieldLike = Union[str, Field]


@dataclass(frozen=True)
class HistSpec:
    """A histogram of ``field``: ``log2`` buckets, or ``linear`` from ``low`` to ``high`` by ``step``;
    one histogram per value of ``by`` (a route, a status...) when given.

    ``sum=True`` also adds up the histogram's values per key; ``sums`` adds up other fields of the same
    hits per key (a call's time spent in itself next to a histogram of its total time), each in a slot
    of its own (:func:`usdtkit.plan.buckets.sum_slot`), so one program gives the count, the
    distribution and several totals of each key."""

    field: Field
    kind: str = "log2"
    low: int = 0
    high: int = 0
    step: int = 1
    by: Union[None, Field, Tuple[Field, ...]] = None  # one field, or several (one histogram per combination)
    bounds: Tuple[int, ...] = ()  # fixed: inclusive upper bounds, increasing
    sum: bool = False  # also keep the sum of the values (one more map update per value)
    sums: Tuple[Field, ...] = ()  # other fields added up per key (one more map update each)

    def __post_init__(self) -> None:
        if self.field.name in ("comm", "ustack", "probe", "str"):
            raise UsageError(f"cannot make a histogram of {self.field}")
        self._check_sums()
        if isinstance(self.by, tuple) and len(self.by) == 1:
            object.__setattr__(self, "by", self.by[0])
        by = self.by_fields
        if len(set(by)) != len(by):
            raise UsageError("a histogram is split by a field twice")
        for fld in by:
            if not isinstance(fld, Field):
                raise UsageError(f"histogram by {fld!r}: not a field")
            if fld.name in ("latency", "ustack", "probe"):
                raise UsageError(f"cannot split histograms by {fld}")
            if fld == self.field:
                raise UsageError("a histogram cannot be split by its own field")
        if self.kind not in ("log2", "linear", "fixed"):
            raise UsageError(f"histogram kind {self.kind!r}: use log2, linear or fixed")
        if self.kind == "fixed":
            limit = 1 << 63
            values = self.bounds
            if not (0 < len(values) <= buckets.MAX_FIXED_BOUNDS and all(
                    isinstance(v, int) and not isinstance(v, bool) and -limit <= v < limit for v in values)
                    and all(a < b for a, b in zip(values, values[1:]))):
                raise UsageError(f"fixed histogram bounds must be 1 to {buckets.MAX_FIXED_BOUNDS} increasing "
                                 "64-bit integers")
        elif self.bounds:
            raise UsageError("bounds are for fixed histograms (kind='fixed')")
        if self.kind == "linear":
            limit = 1 << 63
            if not all(isinstance(v, int) and -limit <= v < limit for v in (self.low, self.high, self.step)):
                raise UsageError("linear histogram bounds and step must fit in a signed 64-bit integer")
            if self.step <= 0 or self.high <= self.low or self.buckets > buckets.MAX_LINEAR_BUCKETS:
                raise UsageError(f"linear histogram needs low < high, step > 0 and at most "
                                 f"{buckets.MAX_LINEAR_BUCKETS} buckets")

    def _check_sums(self) -> None:
        if isinstance(self.sums, Field):
            object.__setattr__(self, "sums", (self.sums,))
        if not isinstance(self.sums, tuple):
            raise UsageError(f"histogram sums {self.sums!r}: give a tuple of fields")
        if len(self.sums) > buckets.MAX_SUMS:
            raise UsageError(f"a histogram keeps at most {buckets.MAX_SUMS} other sums")
        if len(set(self.sums)) != len(self.sums):
            raise UsageError("a histogram sums a field twice")
        for fld in self.sums:
            if not isinstance(fld, Field) or fld.name not in SUMMABLE or fld.side:
                raise UsageError(f"histogram sum of {fld}: only numbers of the hit add up (argN, retval, latency)")
            if fld == self.field:
                raise UsageError(f"histogram sum of {fld}: the histogram's own field; use sum=True")

    @property
    def by_fields(self) -> Tuple[Field, ...]:
        """The fields that split the histogram, in order (none, one or several)."""
        if self.by is None:
            return ()
        return self.by if isinstance(self.by, tuple) else (self.by,)

    @property
    def buckets(self) -> int:
        """Linear buckets between low and high (the last one may be partial); 0 for log2."""
        if self.kind != "linear":
            return 0
        return buckets.linear_count(self.low, self.high, self.step)


KeyFields = Union[None, Field, Tuple[Field, ...]]


def _as_tuple(key: KeyFields) -> Tuple[Field, ...]:
    if key is None:
        return ()
    return key if isinstance(key, tuple) else (key,)


@dataclass(frozen=True)
class PairSpec:
    """Latency between a start probe and a done probe, matched by thread or by fields of each (always
    within one process: two processes can hold the same key).

    A key of several fields matches when every field matches: the start's first field with the
    done's first field, and so on (an id that is unique per thread only: ``arg0&tid``)."""

    start: int  # index of the start probe in the request's probes
    done: int
    start_key: KeyFields = None  # None: match by thread; one field, or several that must all match
    done_key: KeyFields = None

    def __post_init__(self) -> None:
        for name in ("start_key", "done_key"):
            key = getattr(self, name)
            if isinstance(key, tuple) and len(key) == 1:
                object.__setattr__(self, name, key[0])
        starts, dones = self.start_fields, self.done_fields
        if len(starts) != len(dones):
            raise UsageError(f"latency key: {len(starts)} start field(s) and {len(dones)} done field(s); "
                             "give as many of each")
        if len(starts) > MAX_PAIR_KEY_FIELDS:
            raise UsageError(f"latency key: at most {MAX_PAIR_KEY_FIELDS} fields per side")
        for side in (starts, dones):
            if len(set(side)) != len(side):
                raise UsageError("latency key: a field is named twice on one side")
            for key in side:
                if not isinstance(key, Field) or key.name not in PAIR_KEY_NAMES or key.side:
                    raise UsageError(f"latency key {key}: use argN, pid, tid or cpu")

    @property
    def start_fields(self) -> Tuple[Field, ...]:
        """The start probe's key fields, in order (none: match by thread)."""
        return _as_tuple(self.start_key)

    @property
    def done_fields(self) -> Tuple[Field, ...]:
        return _as_tuple(self.done_key)


@dataclass(frozen=True)
class Target:
    """Where to look.  ``pid`` alone: a running process (probes are found in its mappings);
    ``pid`` with ``executable``: a command started under trace (probes found in the executable and
    filtered on the pid); neither: the whole system.  ``follow``: the process and its descendants,
    those alive at attach time and those it starts later."""

    pid: Optional[int] = None
    executable: Optional[str] = None
    cgroup: Optional[str] = None  # a cgroup v2 directory: only hits from tasks in it (a container, a service)
    follow: bool = False

    def __post_init__(self) -> None:
        if self.pid is not None and (not isinstance(self.pid, int) or isinstance(self.pid, bool)
                                     or self.pid <= 0):
            raise UsageError(f"invalid pid {self.pid!r}")
        if not isinstance(self.follow, bool):
            raise UsageError(f"follow is True or False, not {self.follow!r}")
        if self.follow and self.pid is None:
            raise UsageError("follow traces the descendants of a process: give a pid or a command as well")

    @property
    def resolve_in_pid(self) -> bool:
        return self.pid is not None and self.executable is None


@dataclass(frozen=True)
class TraceRequest:
    """A validated, unresolved trace: what to attach, what to read, what to keep and how to aggregate."""

    probes: Tuple[ProbeRef, ...]
    target: Target = Target()
    filters: Tuple[Filter, ...] = ()  # all must hold
    events: bool = False
    event_strings: Tuple[int, ...] = ()  # argument indexes read as NUL-terminated strings
    string_size: int = DEFAULT_STRING_SIZE
    count_by: Optional[Tuple[Field, ...]] = None
    hist: Optional[HistSpec] = None
    function_latency: bool = False  # uprobe/uretprobe pairs on the same function: time per call
    pair: Optional[PairSpec] = None
    stacks: bool = False
    ring_pages: int = DEFAULT_RING_PAGES
    unsafe: bool = False
    max_probes: int = DEFAULT_MAX_PROBES  # more probes than this (patterns expanded) are refused

    def __post_init__(self) -> None:
        if not self.probes:
            raise UsageError("no probe to attach")
        if not isinstance(self.max_probes, int) or isinstance(self.max_probes, bool) or self.max_probes <= 0:
            raise UsageError(f"max_probes must be a positive number, not {self.max_probes!r}")
        if not MIN_STRING_SIZE <= self.string_size <= MAX_STRING_SIZE:
            raise UsageError(f"string size must be between {MIN_STRING_SIZE} and {MAX_STRING_SIZE}")
        if self.ring_pages <= 0 or self.ring_pages & (self.ring_pages - 1):
            raise UsageError("ring buffer pages must be a power of two")
        if len(self.event_strings) > MAX_EVENT_STRINGS:
            raise UsageError(f"at most {MAX_EVENT_STRINGS} string arguments per event")
        for index in self.event_strings:
            if not 0 <= index < MAX_ARGS:
                raise UsageError(f"string argument index {index} out of range")
        keys = list(self.count_by or ())
        if len(set(keys)) != len(keys):
            raise UsageError("count_by names a field twice")
        for fld in keys + ([self.hist.field] if self.hist is not None else []):
            if fld.side:
                raise UsageError(f"{fld}: fields of the start probe split latency histograms only")
        if self.start_fields and not self.latency:
            raise UsageError(f"histogram by {self.start_fields[0]}: only latency traces have a start probe "
                             "(usdtkit latency, latency=True)")

    @property
    def latency(self) -> bool:
        return self.function_latency or self.pair is not None

    @property
    def start_fields(self) -> Tuple[Field, ...]:
        """Histogram key fields read at the start probe and kept with the start time."""
        return tuple(f for f in self.hist.by_fields if f.side) if self.hist is not None else ()

    @property
    def needs_stacks(self) -> bool:
        return self.stacks or any(f.name == "ustack" for f in self.count_by or ())

    @property
    def reads_strings(self) -> bool:
        """Whether any string is read (event strings, ``str(argN)`` keys): ``string_size`` applies."""
        used = list(self.count_by or ())
        if self.hist is not None:
            used.extend(self.hist.by_fields)
        return bool(self.event_strings) or any(f.name == "str" for f in used)


def _field(value: FieldLike, sides: bool = False) -> Field:
    return value if isinstance(value, Field) else Field.parse(value, sides)


def _fields(values: Optional[Union[FieldLike, Iterable[FieldLike]]],
            sides: bool = False) -> Optional[Tuple[Field, ...]]:
    if values is None:
        return None
    if isinstance(values, (str, Field)):
        values = [values]
    return tuple(_field(v, sides) for v in values)


def _pair_key(value: Union[None, FieldLike, Sequence[FieldLike]]) -> KeyFields:
    """One side of ``pair_keys``: a field, fields joined by ``&`` (``"arg0&tid"``), or a sequence."""
    if value is None:
        return None
    return _fields(value.split("&") if isinstance(value, str) else value)


def _entry_arguments(hist: HistSpec) -> HistSpec:
    """A function's arguments exist at its entry only: ``argN`` of a timed function is the entry's."""
    by = tuple(Field(f.name, f.index, "start") if f.argument is not None else f for f in hist.by_fields)
    return replace(hist, by=by or None)


def _strings(values: Iterable[Union[int, str]]) -> Tuple[int, ...]:
    out = []
    for value in values:
        fld = Field.parse(value) if isinstance(value, str) else Field("arg", int(value))
        if fld.name != "arg":
            raise UsageError(f"strings: {value!r} is not an argument")
        out.append(fld.index)
    return tuple(out)


def make_request(
    probes: Sequence[Union[str, ProbeRef]],
    target: Target = Target(),
    filters: Iterable[Union[str, Filter]] = (),
    events: bool = True,
    strings: Iterable[Union[int, str]] = (),
    string_size: Optional[int] = None,
    count_by: Optional[Iterable[FieldLike]] = None,
    hist: Optional[Union[str, Field, HistSpec]] = None,
    hist_by: Optional[FieldLike] = None,
    latency: bool = False,
    pair_keys: Optional[Sequence[Union[None, FieldLike, Sequence[FieldLike]]]] = None,
    stacks: bool = False,
    ring_pages: Optional[int] = None,
    unsafe: bool = False,
    max_probes: Optional[int] = None,
    buffer_size: Optional[Union[int, str]] = None,
) -> TraceRequest:
    """Parse and validate everything a trace needs, reading no file.

    ``latency=True`` with one function (``uprobe:BIN:func``) times each call (entry to return, per
    thread, recursion-safe); with two USDT probes it times start to done, matched by thread or by the
    fields named in ``pair_keys`` (e.g. ``("arg0", "arg0")``; ``("arg0&tid", "arg0&tid")``: every field
    must match), always within one process.  A latency is taken at the done probe (a function's return),
    so ``hist_by`` fields are its values; ``"start.FIELD"`` is the start probe's value, kept with the start
    time, and a function's ``argN`` its argument at entry.  ``unsafe=True``
    allows uprobes at ``func+OFFSET`` or addresses that usdtkit cannot verify to start an instruction.
    An option that would be ignored (``hist_by`` without ``hist``, ``strings`` without events...) is a
    :class:`UsageError`.

    Patterns (``uprobe:libc:mall*``) stand for every probe they match, up to ``max_probes`` probes in
    all (default 512); the latency of a function pattern times each function it matches.

    ``buffer_size`` (bytes, or text such as ``"64M"``) sizes the event buffer, rounded up to a power of
    two pages (:mod:`.buffer_size`); ``ring_pages`` gives the pages directly.
    """
    if isinstance(probes, (str, ProbeRef)):
        probes = [probes]
    refs = [p if isinstance(p, ProbeRef) else parse_probe(p) for p in probes]
    if not refs:
        raise UsageError("no probe given")
    if target.executable:
        refs = [replace(r, binary=target.executable) if not r.binary else r for r in refs]
    strings = tuple(strings)
    if hist_by is not None and hist is None:
        raise UsageError("hist_by splits a histogram: give hist= as well")
    if pair_keys is not None and not latency:
        raise UsageError("pair_keys match start and done probes: give latency=True as well")
    if not events:
        for name, given in (("strings", bool(strings)), ("stacks", stacks), ("ring_pages", ring_pages is not None),
                            ("buffer_size", buffer_size is not None)):
            if given:
                raise UsageError(f"{name}= applies to events, and this trace collects none (events=False)"
                                 + ("; count by 'str(argN)' instead" if name == "strings" else "")
                                 + ("; count by 'ustack' instead" if name == "stacks" else ""))
    if buffer_size is not None:
        if ring_pages is not None:
            raise UsageError("give buffer_size or ring_pages, not both")
        ring_pages = buffer_pages(buffer_size)
    by_fields = _fields(hist_by, sides=True)
    by_field = None if by_fields is None else (by_fields[0] if len(by_fields) == 1 else by_fields)
    if isinstance(hist, HistSpec) and by_field is not None:
        raise UsageError("give hist_by inside the HistSpec (HistSpec(..., by=...)), not both")
    hist_spec = hist if isinstance(hist, HistSpec) or hist is None else HistSpec(_field(hist), by=by_field)
    pair = None
    function_latency = False
    if latency:
        if len(refs) == 1 and not refs[0].is_usdt:
            ref = refs[0]
            if ref.address is not None or ref.offset or ref.is_return:
                raise UsageError(f"latency of {ref}: name a function (uprobe:BINARY:FUNCTION)")
            # A pattern expands to the same functions, in the same order, on both sides.
            refs = [ref, replace(ref, kind="uretprobe")]
            function_latency = True
            if pair_keys is not None:
                raise UsageError("pair_keys match two USDT probes; a function is timed per call")
            if hist_spec is not None:
                hist_spec = _entry_arguments(hist_spec)
        elif len(refs) == 2 and all(r.is_usdt for r in refs):
            for ref in refs:
                if ref.is_pattern:
                    raise UsageError(f"latency between {ref} and another probe: a start and a done probe "
                                     "take exact names, not patterns")
            keys = list(pair_keys) if pair_keys is not None else [None, None]
            if len(keys) != 2:
                raise UsageError("pair_keys needs two fields: the start key and the done key")
            start_key, done_key = (_pair_key(k) for k in keys)
            if (start_key is None) != (done_key is None):
                raise UsageError("pair_keys: give both keys or neither")
            pair = PairSpec(0, 1, start_key, done_key)
        else:
            raise UsageError("latency needs one function (uprobe) or two USDT probes (start and done)")
    if isinstance(filters, (str, Filter)):
        filters = [filters]
    predicates = tuple(f if isinstance(f, Filter) else Filter.parse(f) for f in filters)
    count_fields = _fields(count_by)
    if count_fields and any(f.name == "ustack" for f in count_fields) and target.pid is None:
        if not any(f.name == "pid" for f in count_fields):
            count_fields = count_fields + (Field("pid"),)  # stacks are symbolised per process
    request = TraceRequest(
        probes=tuple(refs), target=target, filters=predicates, events=events,
        event_strings=_strings(strings), string_size=DEFAULT_STRING_SIZE if string_size is None else string_size,
        count_by=count_fields, hist=hist_spec, function_latency=function_latency, pair=pair,
        stacks=stacks, ring_pages=DEFAULT_RING_PAGES if ring_pages is None else ring_pages, unsafe=unsafe,
        max_probes=DEFAULT_MAX_PROBES if max_probes is None else max_probes)
    if string_size is not None and not request.reads_strings:
        raise UsageError("string_size applies to strings read (strings=, 'str(argN)' keys), and this "
                         "trace reads none")
    return request
