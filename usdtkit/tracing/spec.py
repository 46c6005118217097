"""A :class:`TraceSpec` says what to attach, what to read, what to keep and how to aggregate it.

Every field is a validated value: probes resolved to call sites, fields from a closed set
(``arg0``..``arg11``, ``retval``, ``pid``, ``tid``, ``comm``, ``cpu``, ``probe``, ``latency``), operators
from a closed set, numbers as Python ints range-checked to 64 bits, comm filters as bytes.  The code
generator turns it into C without ever copying user text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from ..errors import UsageError
from .resolve import ResolvedProbe

FIELD_NAMES = ("pid", "tid", "comm", "cpu", "probe", "retval", "latency", "ustack")
OPERATORS = ("==", "!=", "<", "<=", ">", ">=")
_ARG = re.compile(r"arg([0-9]|1[01])")
_STR_ARG = re.compile(r"str\(arg([0-9]|1[01])\)")
STRING_KEY_SIZE = 32
MAX_STRING = 256
COMM_LEN = 16


@dataclass(frozen=True)
class Field:
    """A value an event can carry or a key can hold: ``arg3``, ``str(arg1)``, ``pid``, ``latency``...

    ``str(argN)`` is the NUL-terminated string argument ``N`` points to, as a key (first 31 bytes).
    """

    name: str
    index: int = -1  # argument index for argN and str(argN)

    @classmethod
    def parse(cls, text: str) -> "Field":
        text = text.strip() if isinstance(text, str) else text
        if isinstance(text, str):
            match = _ARG.fullmatch(text)
            if match:
                return cls("arg", int(match.group(1)))
            match = _STR_ARG.fullmatch(text)
            if match:
                return cls("str", int(match.group(1)))
            if text in FIELD_NAMES:
                return cls(text)
        raise UsageError(f"unknown field {text!r}: use arg0..arg11, str(argN), " + ", ".join(FIELD_NAMES))

    @property
    def argument(self) -> Optional[int]:
        """The argument index this field reads, if any."""
        return self.index if self.name in ("arg", "str") else None

    @property
    def key_name(self) -> str:
        """A C identifier for this field as a struct member."""
        return f"str_arg{self.index}" if self.name == "str" else str(self)

    def __str__(self) -> str:
        if self.name == "arg":
            return f"arg{self.index}"
        if self.name == "str":
            return f"str(arg{self.index})"
        return self.name


@dataclass(frozen=True)
class Predicate:
    """``field OP value``; comm takes ``==``/``!=`` and a name of at most 15 bytes."""

    field: Field
    op: str
    value: Union[int, bytes]

    @classmethod
    def parse(cls, text: str) -> "Predicate":
        if not isinstance(text, str) or len(text) > 512:
            raise UsageError("filter must be a short string like 'arg0 > 5' or 'comm == nginx'")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise UsageError(f"filter {text!r}: control characters are not allowed")
        match = re.fullmatch(r" *(\w+) *(==|!=|<=|>=|<|>) *(\S+) *", text)
        if not match:
            raise UsageError(f"filter {text!r}: expected FIELD OP VALUE, e.g. 'arg0 > 5'")
        name, op, raw = match.groups()
        fld = Field.parse(name)
        if fld.name == "comm":
            if op not in ("==", "!="):
                raise UsageError(f"filter {text!r}: comm takes == or !=")
            if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
                raw = raw[1:-1]  # comm == "nginx" means the same as comm == nginx
            value = raw.encode()
            if len(value) >= COMM_LEN or not re.fullmatch(rb"[\x21-\x7e]+", value):
                raise UsageError(f"filter {text!r}: comm must be 1-15 printable characters")
            return cls(fld, op, value)
        if fld.name in ("probe", "latency", "ustack", "str"):
            raise UsageError(f"filter {text!r}: cannot filter on {fld}")
        try:
            number = int(raw, 0)
        except ValueError:
            raise UsageError(f"filter {text!r}: {raw!r} is not an integer") from None
        if not -(1 << 63) <= number < (1 << 64):
            raise UsageError(f"filter {text!r}: {raw} does not fit in 64 bits")
        return cls(fld, op, number)


@dataclass(frozen=True)
class HistSpec:
    """A histogram of ``field``: ``log2`` buckets, or ``linear`` from ``low`` to ``high`` by ``step``;
    one histogram per value of ``by`` (a route, a status...) when given."""

    field: Field
    kind: str = "log2"
    low: int = 0
    high: int = 0
    step: int = 1
    by: Optional[Field] = None

    def __post_init__(self) -> None:
        if self.field.name in ("comm", "ustack", "probe", "str"):
            raise UsageError(f"cannot make a histogram of {self.field}")
        if self.by is not None and self.by.name in ("latency", "ustack", "probe"):
            raise UsageError(f"cannot split histograms by {self.by}")
        if self.kind not in ("log2", "linear"):
            raise UsageError(f"histogram kind {self.kind!r}: use log2 or linear")
        if self.kind == "linear":
            limit = 1 << 63
            if not all(isinstance(v, int) and -limit <= v < limit for v in (self.low, self.high, self.step)):
                raise UsageError("linear histogram bounds and step must fit in a signed 64-bit integer")
            if self.step <= 0 or self.high <= self.low or self.buckets > 4096:
                raise UsageError("linear histogram needs low < high, step > 0 and at most 4096 buckets")

    @property
    def buckets(self) -> int:
        """Linear buckets between low and high (the last one may be partial); 0 for log2."""
        if self.kind != "linear":
            return 0
        return -(-(self.high - self.low) // self.step)


@dataclass(frozen=True)
class PairSpec:
    """Latency between a start probe and a done probe, matched by thread or by an argument of each."""

    start: int  # index of the start probe in TraceSpec.probes
    done: int
    start_key: Optional[Field] = None  # None: match by thread
    done_key: Optional[Field] = None


def _check_field(fld: Field, probe: ResolvedProbe, role: str, latency: bool) -> None:
    """Refuse a field that the probe where it is read cannot provide (never read it as 0)."""
    label = probe.label
    if fld.argument is not None:
        if fld.index >= probe.arg_count:
            raise UsageError(f"{role} {fld}: {label} has {probe.arg_count} argument(s)")
        if fld.name == "str":
            from ..bpf.codegen import pointer_like  # the one rule for what can be a pointer

            if not pointer_like(probe, fld.index):
                raise UsageError(f"{role} {fld}: argument {fld.index} of {label} is not a pointer "
                                 "(a string argument is an unsigned 8-byte value)")
    elif fld.name == "retval" and not probe.ref.is_return:
        raise UsageError(f"{role} retval: {label} is not a uretprobe")
    elif fld.name == "latency" and not latency:
        raise UsageError(f"{role} latency: only latency traces (latency=True) measure it")


@dataclass(frozen=True)
class TraceSpec:
    probes: Tuple[ResolvedProbe, ...]
    pid: Optional[int] = None
    filters: Tuple[Predicate, ...] = ()
    events: bool = False
    event_strings: Tuple[int, ...] = ()  # argument indexes read as NUL-terminated strings
    string_size: int = 64
    count_by: Optional[Tuple[Field, ...]] = None
    hist: Optional[HistSpec] = None
    function_latency: bool = False  # uprobe/uretprobe pairs on the same function: time per call
    pair: Optional[PairSpec] = None
    stacks: bool = False
    ring_pages: int = 256

    def __post_init__(self) -> None:
        if not self.probes:
            raise UsageError("no probe to attach")
        if not 8 <= self.string_size <= MAX_STRING:
            raise UsageError(f"string size must be between 8 and {MAX_STRING}")
        if self.ring_pages <= 0 or self.ring_pages & (self.ring_pages - 1):
            raise UsageError("ring buffer pages must be a power of two")
        if len(self.event_strings) > 4:
            raise UsageError("at most 4 string arguments per event")
        for index in self.event_strings:
            if not 0 <= index < 12:
                raise UsageError(f"string argument index {index} out of range")
        if self.pid is not None and not 0 < self.pid < (1 << 22):
            raise UsageError(f"invalid pid {self.pid}")

        self._check_fields()

    def handler_probes(self) -> Tuple[ResolvedProbe, ...]:
        """The probes where counts, histograms and events are taken (the done/return side of a
        latency trace, every probe otherwise)."""
        if self.pair is not None:
            return (self.probes[self.pair.done],)
        if self.function_latency:
            return tuple(p for p in self.probes if p.ref.is_return)
        return self.probes

    def _check_fields(self) -> None:
        latency = self.function_latency or self.pair is not None
        keys = list(self.count_by or ())
        if len(set(keys)) != len(keys):
            raise UsageError("count_by names a field twice")
        if self.hist is not None and self.hist.by is not None and self.hist.by == self.hist.field:
            raise UsageError("a histogram cannot be split by its own field")
        for probe in self.handler_probes():
            for fld in keys:
                _check_field(fld, probe, "count by", latency)
            if self.hist is not None:
                _check_field(self.hist.field, probe, "histogram of", latency)
                if self.hist.by is not None:
                    _check_field(self.hist.by, probe, "histogram by", latency)
        if self.event_strings:
            from ..bpf.codegen import pointer_like

            for index in self.event_strings:
                if not any(pointer_like(p, index) for p in self.handler_probes()):
                    raise UsageError(f"string arg{index}: no traced probe has a pointer argument {index}")
        if self.pair is not None:
            for index, key in ((self.pair.start, self.pair.start_key), (self.pair.done, self.pair.done_key)):
                if key is None:
                    continue
                if key.name not in ("arg", "pid", "tid", "cpu"):
                    raise UsageError(f"latency key {key}: use argN, pid, tid or cpu")
                _check_field(key, self.probes[index], "latency key", True)

    @property
    def needs_stacks(self) -> bool:
        return self.stacks or any(f.name == "ustack" for f in self.count_by or ())
