"""The exporter's config: every mistake is one line naming the file, the line and the metric, through
``usdtkit exporter --check`` as a user runs it; bucket bounds are exact or refused."""
from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from usdtkit.collect.results import Histogram
from usdtkit.errors import ConfigError
from usdtkit.exporter.collector import cumulative, kernel_les, limit_series
from usdtkit.exporter.config import load_config
from usdtkit.exporter.metrics import BucketSpec, MetricSpec, exposed_bounds, kernel_buckets

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
metrics:
  - name: malloc_calls
    help: Calls of malloc
    type: counter
    probe: uprobe:libc:malloc
    labels: {comm: comm}
    filter: 'arg0 > 0'
  - name: malloc_request_bytes
    type: histogram
    probe: uprobe:libc:malloc
    value: arg0
    buckets: {linear: [0, 4096, 512]}
  - name: malloc_seconds
    type: histogram
    latency: uprobe:libc:malloc
    buckets: [0.000001, 0.000005, 0.00001]
"""


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "exporter", "--config", str(path), "--check"],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exporter.yaml"
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_the_example_config_checks(tmp_path):
    result = check(write(tmp_path, GOOD))
    assert result.returncode == 0, result.stderr
    assert "3 metrics" in result.stdout


@pytest.mark.parametrize("old, new, line, says", [
    ("labels: {comm", "lables: {comm", 6, "metric malloc_calls: unknown field 'lables'"),
    ("probe: uprobe:libc:malloc\n    labels", "probe: uprobe:libc\n    labels", 5,
     "metric malloc_calls: probe 'uprobe:libc'"),
    ("'arg0 > 0'", "'arg0 >> '", 7, "metric malloc_calls: filter 'arg0 >> ', column 9: expected a value"),
    ("type: counter", "type: gauge", 4, "metric malloc_calls: type 'gauge': use counter or histogram"),
    ("    probe: uprobe:libc:malloc\n    labels", "    labels", 2, "metric malloc_calls: missing probe"),
    ("labels: {comm: comm}", "labels: {comm: arg99}", 6, "metric malloc_calls: unknown field 'arg99'"),
    ("value: arg0", "value: arg0\n    labels: {a: arg1, b: arg1}", 8, "split by a field twice"),
    ("[0.000001, 0.000005, 0.00001]", "[0.000001, 0.0000050001]", 16, "not a whole nanosecond"),
    ("[0.000001, 0.000005, 0.00001]", "[0.000002, 0.000001]", 16, "strictly increasing list"),
    ("latency: uprobe:libc:malloc", "latency: uprobe:libc:no_such_function_here", 15, "metric malloc_seconds:"),
    ("name: malloc_seconds", "name: malloc_calls", 13, "used twice (first on line 2)"),
    ("filter: 'arg0 > 0'", "filter: 'arg0 > 0'\n    series_ttl: -1", 8, "series_ttl must be between 0"),
    ("filter: 'arg0 > 0'", "filter: 'arg0 > 0'\n    label_values: {pid: {1: init}}", 8, "not one of the metric's labels"),
    ("filter: 'arg0 > 0'", "filter: 'arg0 > 0'\n    comm: 'sixteen-bytes-xx'", 8,
     "comm 'sixteen-bytes-xx': comm holds at most 15 bytes"),
    ("filter: 'arg0 > 0'", "filter: 'arg0 > 0'\n    cgroup: /etc", 8, "not in a cgroup v2 hierarchy"),
    ("value: arg0", "value: arg0\n    series_ttl: 60", 12, "series_ttl applies to counters"),
    ("series_limit", "series_limit", 1, None),
])
def test_each_bad_config_is_one_line_with_file_and_line(tmp_path, old, new, line, says):
    if says is None:  # a field given twice is a YAML mapping error of its own
        text = GOOD.replace("type: counter", "type: counter\n    type: counter")
        line, says = 5, "'type' given twice"
    else:
        assert old in GOOD
        text = GOOD.replace(old, new, 1)
    path = write(tmp_path, text)
    result = check(path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{path}:{line}:" in result.stderr and says in result.stderr, result.stderr


def test_yaml_syntax_errors_name_the_line(tmp_path):
    path = write(tmp_path, GOOD.replace("type: histogram", "type: [histogram", 1))
    with pytest.raises(ConfigError, match=r"exporter\.yaml:\d+: "):
        load_config(str(path))


def test_a_config_others_can_write_is_refused(tmp_path):
    path = write(tmp_path, GOOD)
    path.chmod(0o666)
    with pytest.raises(ConfigError, match="writable by group or others"):
        load_config(str(path))


def test_listed_bounds_become_exact_fixed_buckets():
    spec = MetricSpec("m", "histogram", latency="uprobe:libc:malloc",
                      buckets=BucketSpec("bounds", bounds=(Fraction(1, 1000), Fraction(5, 1000), Fraction(1, 100))))
    kind, low, high, step, bounds = kernel_buckets(spec)
    assert (kind, bounds) == ("fixed", (1_000_000, 5_000_000, 10_000_000))
    hist = Histogram(kind, {}, low, high, step, upper_bounds=bounds)
    values = [0, 999_999, 1_000_000, 1_000_001, 4_999_999, 5_000_000, 5_000_001, 10_000_000, 10_000_001]
    for value in values:
        hist.buckets[hist.bucket_of(value)] = hist.buckets.get(hist.bucket_of(value), 0) + 1
    les = exposed_bounds(spec)
    assert les == (1_000_000, 5_000_000, 10_000_000)
    got = dict(cumulative(hist, les))
    for le in les:  # each cumulative bucket holds exactly the values <= le
        assert got[le] == sum(1 for v in values if v <= le)
    assert got["+Inf"] == len(values)


def test_exp2_boundaries_are_inclusive_and_shared_by_label_sets():
    a, b = Histogram("log2"), Histogram("log2")
    for value in (0, 1, 2, 3, 4, 1023, 1024):
        a.buckets[a.bucket_of(value)] = a.buckets.get(a.bucket_of(value), 0) + 1
    b.buckets[b.bucket_of(5)] = 1
    les = kernel_les([a, b])
    assert les == [(1 << i) - 1 for i in range(12)]
    got = dict(cumulative(a, les))
    for le in les:
        assert got[le] == sum(1 for v in (0, 1, 2, 3, 4, 1023, 1024) if v <= le)


def test_series_over_the_limit_are_counted_and_the_kept_ones_stay():
    rows = {("a",): 5, ("b",): 9, ("c",): 1}
    chosen, over = limit_series(rows, 2, set())
    assert chosen == {("a",), ("b",)} and over == 1
    rows[("c",)] = 100  # a newcomer does not push out a series already exposed
    chosen, over = limit_series(rows, 2, chosen)
    assert chosen == {("a",), ("b",)} and over == 1


def exporter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "exporter", *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_a_bad_or_taken_listen_address_is_one_line(tmp_path):
    import socket

    config = str(write(tmp_path, GOOD))
    result = exporter("--config", config, "--listen", "nonsense")
    assert result.returncode == 2 and "expected HOST:PORT" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = exporter("--config", config, "--listen", f"127.0.0.1:{taken.getsockname()[1]}")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot serve on 127.0.0.1:" in result.stderr


def test_help_says_loopback_by_default():
    assert "127.0.0.1:9435: loopback only" in " ".join(exporter("--help").stdout.split())
