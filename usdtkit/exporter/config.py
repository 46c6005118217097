"""The exporter's YAML configuration, validated whole before anything attaches.

The file is read as a YAML node tree (``yaml.compose``), not as plain values, so every error names the
line of the node at fault: ``exporter.yaml:12: metric pg_commits: unknown field 'lables'``.  Each
metric is turned into its trace request here (:func:`.metrics.to_request`), so bad probe specs,
fields, filters and bucket bounds are found by ``--check`` as well as at start and on reload.

The file decides what root traces and which memory ends up in labels, so it must be owned by root
(or this user) and writable by no one else; it is read through one descriptor that was checked.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Dict, List, Optional, Tuple

import yaml

from ..errors import ConfigError, UsdtkitError
from ..expr.fields import Field
from ..expr.filters import Filter
from ..expr.tree import Binary, Builtin, Text
from ..plan.refs import parse_probe
from ..plan.cgroups import cgroup_id
from .metrics import BucketSpec, MetricSpec, kernel_buckets, to_request

DEFAULT_RESOLVE_INTERVAL = 5.0
MAX_CONFIG_BYTES = 1 << 20
SELF_PREFIX = "usdtkit_exporter_"
_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TOP_FIELDS = ("metrics", "resolve_interval")
_METRIC_FIELDS = ("name", "help", "type", "probe", "start", "done", "key", "latency", "value", "labels",
                  "label_values", "comm", "cgroup",
                  "filter", "buckets", "pid", "series_limit", "series_ttl")
_HISTOGRAM_ONLY = ("start", "done", "key", "latency", "value", "buckets")


@dataclass(frozen=True)
class ExporterConfig:
    """A whole configuration: its metrics, and how often targets are resolved again (seconds)."""

    path: str
    metrics: Tuple[MetricSpec, ...]
    resolve_interval: float = DEFAULT_RESOLVE_INTERVAL


class _Reader:
    """Turns nodes into values, raising :class:`ConfigError` with the file and line."""

    def __init__(self, path: str) -> None:
        self.name = path
        self._loader = yaml.SafeLoader("")

    def fail(self, node: Optional[yaml.Node], message: str, metric: str = "") -> ConfigError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        where = f" metric {metric}:" if metric else ""
        return ConfigError(f"{self.name}{line}:{where} {message}")

    def mapping(self, node: yaml.Node, what: str, metric: str = "") -> Dict[str, Tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping (key: value)", metric)
        out: Dict[str, Tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            name = self.scalar(key, str, f"a key of {what}", metric)
            if name in out:
                raise self.fail(key, f"{name!r} given twice", metric)
            out[name] = (key, value)
        return out

    def scalar(self, node: yaml.Node, kind: type, what: str, metric: str = "") -> object:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single {kind.__name__}", metric)
        if kind is str:
            if node.tag != "tag:yaml.org,2002:str":
                raise self.fail(node, f"{what} must be a string (quote it)", metric)
            return node.value
        value = self._loader.construct_object(node)
        if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise self.fail(node, f"{what} must be a whole number, not {node.value!r}", metric)
        if kind is Fraction:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
                    or value in (float("inf"), float("-inf")):
                raise self.fail(node, f"{what} must be a number, not {node.value!r}", metric)
            return Fraction(node.value) if isinstance(value, float) else Fraction(value)
        return value

    def strings(self, node: yaml.Node, what: str, metric: str) -> List[Tuple[yaml.Node, str]]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        return [(item, self.scalar(item, str, what, metric)) for item in items]  # type: ignore[misc]


def _check(reader: _Reader, node: yaml.Node, metric: str, fn, text: str) -> None:
    try:
        fn(text)
    except UsdtkitError as exc:
        raise reader.fail(node, str(exc), metric) from None


def _buckets(reader: _Reader, node: yaml.Node, name: str) -> BucketSpec:
    if isinstance(node, yaml.ScalarNode):
        if node.value != "exp2":
            raise reader.fail(node, f"buckets {node.value!r}: use exp2, {{linear: [low, high, step]}} or a "
                              "list of bounds", name)
        return BucketSpec()
    if isinstance(node, yaml.SequenceNode):
        bounds = [reader.scalar(item, Fraction, "a bucket bound", name) for item in node.value]
        if not bounds or any(b >= a for a, b in zip(bounds[1:], bounds)):
            raise reader.fail(node, "bucket bounds must be a non-empty, strictly increasing list", name)
        return BucketSpec("bounds", bounds=tuple(bounds))  # type: ignore[arg-type]
    fields = reader.mapping(node, "buckets", name)
    if set(fields) != {"linear"}:
        raise reader.fail(node, "buckets: use exp2, {linear: [low, high, step]} or a list of bounds", name)
    key, value = fields["linear"]
    if not isinstance(value, yaml.SequenceNode) or len(value.value) != 3:
        raise reader.fail(value, "linear buckets take [low, high, step]", name)
    low, high, step = (reader.scalar(v, Fraction, "a linear bucket number", name) for v in value.value)
    return BucketSpec("linear", low, high, step)  # type: ignore[arg-type]


def _metric(reader: _Reader, node: yaml.Node) -> MetricSpec:
    fields = reader.mapping(node, "a metric")
    if "name" not in fields:
        raise reader.fail(node, "a metric needs a name")
    name_node = fields["name"][1]
    name = reader.scalar(name_node, str, "name")
    if not _METRIC_NAME.fullmatch(name) or len(name) > 200:  # type: ignore[arg-type]
        raise reader.fail(name_node, f"metric name {name!r}: use letters, digits and _ (not first a digit)")
    if name.startswith(SELF_PREFIX):  # type: ignore[union-attr]
        raise reader.fail(name_node, f"metric name {name!r}: the prefix {SELF_PREFIX} is the exporter's own")
    name = str(name)
    for key, (key_node, _) in fields.items():
        if key not in _METRIC_FIELDS:
            raise reader.fail(key_node, f"unknown field {key!r} (fields: {', '.join(_METRIC_FIELDS)})", name)
    if "type" not in fields:
        raise reader.fail(node, "missing field 'type' (counter or histogram)", name)
    type_node = fields["type"][1]
    kind = reader.scalar(type_node, str, "type", name)
    if kind not in ("counter", "histogram"):
        raise reader.fail(type_node, f"type {kind!r}: use counter or histogram", name)

    def text(key: str) -> Optional[str]:
        return str(reader.scalar(fields[key][1], str, key, name)) if key in fields else None

    spec = MetricSpec(name=name, type=str(kind), help=str(text("help") or ""))
    if kind == "counter":
        for key in _HISTOGRAM_ONLY:
            if key in fields:
                raise reader.fail(fields[key][0], f"field {key!r} applies to histograms", name)
    sources = [k for k in ("probe", "start", "latency") if k in fields]
    if "done" in fields and "start" not in fields:
        raise reader.fail(fields["done"][0], "'done' needs 'start'", name)
    if "start" in fields and "done" not in fields:
        raise reader.fail(fields["start"][0], "'start' needs 'done'", name)
    if not sources:
        need = "'probe'" if kind == "counter" else "'probe' with 'value', 'start' and 'done', or 'latency'"
        raise reader.fail(node, f"missing probe: give {need}", name)
    if len(sources) > 1:
        raise reader.fail(fields[sources[1]][0], f"give one of 'probe', 'start'/'done' or 'latency', "
                          f"not {' and '.join(repr(s) for s in sources)}", name)
    for key in ("probe", "start", "done", "latency"):
        if key in fields:
            for item, spec_text in reader.strings(fields[key][1], f"{key} (a probe spec)", name):
                _check(reader, item, name, parse_probe, spec_text)
    if kind == "histogram" and "probe" in fields and "value" not in fields:
        raise reader.fail(node, "a histogram of 'probe' needs 'value' (the field to measure)", name)
    if "value" in fields and "probe" not in fields:
        raise reader.fail(fields["value"][0], "'value' applies to 'probe' (latency is the value of "
                          "'start'/'done' and 'latency')", name)
    if "key" in fields and "start" not in fields:
        raise reader.fail(fields["key"][0], "'key' matches 'start' and 'done'", name)
    for key in ("value", "key"):
        if key in fields:
            _check(reader, fields[key][1], name, Field.parse, str(text(key)))
    labels: List[Tuple[str, str]] = []
    if "labels" in fields:
        for label, (label_node, value) in reader.mapping(fields["labels"][1], "labels", name).items():
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__") or label == "le":
                raise reader.fail(label_node, f"label name {label!r}: use letters, digits and _ "
                                  "(not le, not starting with __)", name)
            fld = reader.scalar(value, str, f"label {label} (a field)", name)
            _check(reader, value, name, Field.parse, str(fld))
            labels.append((label, str(Field.parse(str(fld)))))
    label_values: List[Tuple[str, Tuple[Tuple[str, str], ...]]] = []
    if "label_values" in fields:
        named = dict(labels)
        for label, (label_node, table) in reader.mapping(fields["label_values"][1], "label_values", name).items():
            if label not in named:
                raise reader.fail(label_node, f"label_values {label!r}: not one of the metric's labels", name)
            pairs = []
            for raw, (raw_node, shown) in reader.mapping(table, f"label_values of {label}", name).items():
                pairs.append((raw, str(reader.scalar(shown, str, f"the name for {label} {raw}", name))))
            label_values.append((label, tuple(pairs)))
    filters = []
    if "comm" in fields:
        comm = str(reader.scalar(fields["comm"][1], str, "comm (a process name)", name))
        try:
            comm_filter = Filter.of(Binary("==", Builtin("comm"), Text(comm.encode())))
        except UsdtkitError as exc:
            raise reader.fail(fields["comm"][1], f"comm {comm!r}: {exc}", name) from None
        filters.append(str(comm_filter))
    if "filter" in fields:
        for item, filter_text in reader.strings(fields["filter"][1], "filter", name):
            _check(reader, item, name, Filter.parse, filter_text)
            filters.append(filter_text)
    probes = tuple(t for _, t in reader.strings(fields["probe"][1], "probe", name)) if "probe" in fields else ()
    spec = replace(spec, probes=probes, start=text("start"), done=text("done"), key=text("key"),
                   latency=text("latency"), value=text("value"), labels=tuple(labels), filters=tuple(filters),
                   label_values=tuple(label_values),
                   line=node.start_mark.line + 1)
    source = fields[sources[0]][1]
    spec = replace(spec, probe_line=source.start_mark.line + 1)
    if "buckets" in fields:
        spec = replace(spec, buckets=_buckets(reader, fields["buckets"][1], name))
        try:
            kernel_buckets(spec)
        except UsdtkitError as exc:
            raise reader.fail(fields["buckets"][1], str(exc), name) from None
    if "pid" in fields:
        pid = reader.scalar(fields["pid"][1], int, "pid", name)
        if pid <= 0:  # type: ignore[operator]
            raise reader.fail(fields["pid"][1], f"pid {pid}: must be a process id", name)
        spec = replace(spec, pid=pid)
    if "cgroup" in fields:
        path = str(reader.scalar(fields["cgroup"][1], str, "cgroup (a cgroup v2 directory)", name))
        try:
            cgroup_id(path)
        except UsdtkitError as exc:
            raise reader.fail(fields["cgroup"][1], str(exc), name) from None
        spec = replace(spec, cgroup=path)
    if "series_limit" in fields:
        limit = reader.scalar(fields["series_limit"][1], int, "series_limit", name)
        if not 1 <= limit <= 1_000_000:  # type: ignore[operator]
            raise reader.fail(fields["series_limit"][1], "series_limit must be between 1 and 1000000", name)
        spec = replace(spec, series_limit=limit)
    if "series_ttl" in fields:
        ttl = reader.scalar(fields["series_ttl"][1], int, "series_ttl", name)
        if not 0 <= ttl <= 31_536_000:  # type: ignore[operator]
            raise reader.fail(fields["series_ttl"][1], "series_ttl must be between 0 (never) and 31536000 "
                              "seconds", name)
        if spec.type != "counter" and ttl:
            raise reader.fail(fields["series_ttl"][1], "series_ttl applies to counters", name)
        spec = replace(spec, series_ttl=ttl)
    try:
        to_request(spec)
    except UsdtkitError as exc:
        raise reader.fail(node, str(exc), name) from None
    return spec


def parse_config(text: str, path: str) -> ExporterConfig:
    """Validate ``text`` (the content of ``path``) and return the configuration."""
    reader = _Reader(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}{line}: {problem}") from None
    if root is None:
        raise ConfigError(f"{path}: empty configuration (it needs 'metrics:')")
    top = reader.mapping(root, "the configuration")
    for key, (key_node, _) in top.items():
        if key not in _TOP_FIELDS:
            raise reader.fail(key_node, f"unknown field {key!r} (fields: {', '.join(_TOP_FIELDS)})")
    if "metrics" not in top:
        raise reader.fail(root, "missing field 'metrics'")
    metrics_node = top["metrics"][1]
    if not isinstance(metrics_node, yaml.SequenceNode) or not metrics_node.value:
        raise reader.fail(metrics_node, "'metrics' must be a non-empty list")
    metrics = [_metric(reader, item) for item in metrics_node.value]
    seen: Dict[str, int] = {}
    for metric, item in zip(metrics, metrics_node.value):
        exposed = metric.name[:-len("_total")] if metric.name.endswith("_total") else metric.name
        if exposed in seen:
            raise reader.fail(item, f"metric name {metric.name!r} is used twice (first on line {seen[exposed]})")
        seen[exposed] = item.start_mark.line + 1
    interval = DEFAULT_RESOLVE_INTERVAL
    if "resolve_interval" in top:
        node = top["resolve_interval"][1]
        interval = float(reader.scalar(node, Fraction, "resolve_interval"))  # type: ignore[arg-type]
        if not 0.5 <= interval <= 3600:
            raise reader.fail(node, "resolve_interval must be between 0.5 and 3600 seconds")
    return ExporterConfig(path, tuple(metrics), interval)


def load_config(path: str) -> ExporterConfig:
    """Read ``path`` through one checked descriptor (owned by root or this user, writable by no one
    else, a regular file) and validate it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        if info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o022:
            raise ConfigError(f"{path}: owned by uid {info.st_uid} or writable by group or others; it decides "
                              "what is traced, so only its owner (root or you) may write it")
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_config(text, path)
