"""`usdtkit exporter` as a service: a real Prometheus scrapes it while the demo service takes load, and
what Prometheus stores equals the load; SIGHUP reloads, SIGTERM leaves nothing, replaced binaries are
traced again."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from usdtkit import demo_services
from usdtkit.cli.demo_prometheus import config_text

from test_lifecycle import assert_no_new_programs, usdtkit_link_ids, usdtkit_program_ids

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.bpf


def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class Exporter:
    """A running ``usdtkit exporter``: its log lines as they come, its port, its /metrics."""

    def __init__(self, config: Path) -> None:
        self.lines: List[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "usdtkit.cli.main", "exporter", "--config", str(config),
                                      "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        served = wait_for(lambda: [l for l in self.lines if "serving http://" in l] or self.proc.poll() is not None,
                          60, "the exporter to serve")
        assert self.proc.poll() is None, "\n".join(self.lines)
        self.port = int(served[0].rsplit(":", 1)[1].split("/")[0])

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def said(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def samples(self) -> Dict[str, float]:
        """The exposition as ``{'name{labels}': value}``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        self.proc.stderr.close()
        return self.proc.returncode


@pytest.fixture
def exporters():
    started: List[Exporter] = []

    def start(config: Path) -> Exporter:
        exporter = Exporter(config)
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.stop(signal.SIGKILL)


@pytest.fixture
def httpd():
    service = demo_services.start_httpd()
    yield service
    service.stop()


def start_prometheus(target_port: int, workdir: Path) -> demo_services.PrometheusServer:
    if not os.path.exists(demo_services.PROMETHEUS):
        pytest.fail(f"{demo_services.PROMETHEUS} is missing: ./dev.sh test installs Debian's prometheus")
    return demo_services.PrometheusServer(f"127.0.0.1:{target_port}", str(workdir))


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_prometheus_stores_exactly_the_load(tmp_path, httpd, exporters):
    more = f"""\
  - name: demo_render_seconds
    type: histogram
    latency: uprobe:{httpd.binary}:render_items
    buckets: [0.000001, 0.0001, 1]
    pid: {httpd.pid}
  - name: demo_response_bytes
    type: histogram
    probe: usdt:{httpd.binary}:demo_httpd:request__done
    value: arg3
    buckets: {{linear: [0, 4096, 256]}}
    pid: {httpd.pid}
"""
    exporter = exporters(write_config(tmp_path / "exporter.yaml", config_text(httpd.binary, httpd.pid) + more))
    prometheus = start_prometheus(exporter.port, tmp_path)
    try:
        wait_for(lambda: prometheus.query('up{job="usdtkit"}') == {"": 1.0}, 30, "a first scrape")
        demo_services.drive([httpd], 7)
        routes = {"/": "200", "/items": "200", "/slow": "200", "other": "404"}
        want = {f"{route},{status}": 7.0 for route, status in routes.items()}
        wait_for(lambda: prometheus.query("demo_requests_total") == want, 30, f"counts {want}")
        counts = {route: 7.0 for route in routes}
        wait_for(lambda: prometheus.query("demo_request_duration_seconds_count") == counts, 30, "latency counts")
        wait_for(lambda: prometheus.query("demo_render_seconds_count") == {"": 7.0}, 30, "render_items calls")
        # the listed bounds are the buckets, exactly: every call takes more than 1 ns and less than 1 s
        render = prometheus.query("demo_render_seconds_bucket")
        assert set(render) == {"1e-06", "0.0001", "1.0", "+Inf"} and render["1.0"] == render["+Inf"] == 7.0, render
        wait_for(lambda: prometheus.query("demo_response_bytes_count") == {"": 28.0}, 30, "response sizes")
        sizes = prometheus.query('demo_response_bytes_bucket{le="4095.0"}')
        assert sizes == {"4095.0": 28.0}  # every demo response is smaller than 4 KiB
        (total_bytes,) = prometheus.query("demo_response_bytes_sum").values()
        assert 28 <= total_bytes < 28 * 4096  # the sum of the 28 sizes, each above 0 and below 4 KiB
        means = prometheus.query("demo_request_duration_seconds_sum / demo_request_duration_seconds_count")
        assert 0.005 < means["/slow"] < 1.0 and means["/"] < means["/slow"], means
        p99 = prometheus.query('histogram_quantile(0.99, demo_request_duration_seconds_bucket)')
        assert set(p99) == set(routes)
        assert 0.005 < p99["/slow"] < 1.0, p99  # the demo's /slow route sleeps about 20 ms
        assert 0 < p99["/"] < 0.005, p99
        demo_services.drive([httpd], 7)  # a second round, so every rate in the dashboard has an increase
        wait_for(lambda: prometheus.query("demo_requests_total") == {k: 14.0 for k in want}, 30, "the second round")
        wait_for(lambda: prometheus.query("demo_response_bytes_count") == {"": 56.0}, 30, "the second round's sizes")
        time.sleep(2)  # a scrape after the last increase for rate() to see it
        board = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "exporter", "--config",
                                str(tmp_path / "exporter.yaml"), "--grafana-dashboard"], capture_output=True,
                               text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
        assert board.returncode == 0, board.stderr
        panels = json.loads(board.stdout)["panels"]
        assert [p["type"] for p in panels] == ["timeseries", "heatmap", "timeseries", "heatmap", "timeseries",
                                               "heatmap", "timeseries"]
        for panel in panels:
            for target in panel["targets"]:
                result = prometheus.query(target["expr"])
                assert result and all(v == v and v >= 0 for v in result.values()), (target["expr"], result)
                assert any(v > 0 for v in result.values()), (target["expr"], result)
        names = ("demo_requests", "demo_request_duration_seconds", "demo_render_seconds", "demo_response_bytes")
        assert prometheus.query('usdtkit_exporter_metric_up') == {name: 1.0 for name in names}
        losses = prometheus.query('sum by (metric) (usdtkit_exporter_losses_total)')
        assert losses == {name: 0.0 for name in names}
    finally:
        prometheus.stop()
    assert exporter.stop() == 0


def test_sighup_keeps_unchanged_values_adds_metrics_and_sigterm_leaves_nothing(tmp_path, httpd, exporters):
    programs, links = usdtkit_program_ids(), usdtkit_link_ids()
    config = write_config(tmp_path / "exporter.yaml", config_text(httpd.binary, httpd.pid))
    exporter = exporters(config)
    demo_services.drive([httpd], 3, routes=["/"])
    key = 'demo_requests_total{route="/",status="200"}'
    wait_for(lambda: exporter.samples().get(key) == 3.0, 10, "3 requests counted")
    added = f"""\
  - name: demo_accepts
    type: counter
    probe: usdt:{httpd.binary}:demo_httpd:conn__accept
    pid: {httpd.pid}
"""
    write_config(config, config_text(httpd.binary, httpd.pid) + added)
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "demo_accepts_total" in exporter.samples(), 30, "the added metric")
    assert exporter.samples()[key] == 3.0  # the unchanged metric kept its session and its count
    assert exporter.said("metric demo_requests up") == 1
    demo_services.drive([httpd], 2, routes=["/"])
    wait_for(lambda: exporter.samples().get(key) == 5.0, 10, "5 requests counted")
    assert exporter.samples()["demo_accepts_total"] == 2.0
    held = programs_held(exporter.proc.pid)
    write_config(config, config_text(httpd.binary, httpd.pid).split("  - name: demo_request_duration")[0] + added)
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: exporter.said("metric demo_request_duration_seconds removed"), 30, "the removed metric")
    assert 'usdtkit_exporter_metric_up{metric="demo_request_duration_seconds"}' not in exporter.samples()
    assert len(programs_held(exporter.proc.pid)) < len(held)  # its programs were detached and closed
    assert exporter.samples()[key] == 5.0
    write_config(config, config_text(httpd.binary, httpd.pid).replace("type: counter", "type: nonsense"))
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: exporter.said("reload refused"), 10, "the bad reload to be refused")
    assert exporter.samples()[key] == 5.0
    assert exporter.stop(signal.SIGTERM) == 0
    assert not [line for line in exporter.lines if "Traceback" in line]
    assert_no_new_programs(programs)
    deadline = time.time() + 5
    while usdtkit_link_ids() - links and time.time() < deadline:
        time.sleep(0.05)
    assert not usdtkit_link_ids() - links


def programs_held(pid: int) -> set:
    """IDs of the BPF programs process ``pid`` holds through its fds."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                held |= {int(line.split()[1]) for line in info if line.startswith("prog_id:")}
        except OSError:
            continue
    return held


def start_from(binary: str) -> subprocess.Popen:
    proc = subprocess.Popen([binary, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    proc.port = int(line.split()[-1])  # type: ignore[attr-defined]
    return proc


def get(proc: subprocess.Popen, path: str, times: int) -> None:
    for _ in range(times):
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}{path}", timeout=5) as reply:  # type: ignore[attr-defined]
            reply.read()


def test_a_binary_replaced_at_its_path_is_traced_again(httpd, exporters):
    folder = tempfile.mkdtemp(prefix="usdtkit-upgrade-")  # root's own folder: no one else can swap the file
    binary = os.path.join(folder, "demo_httpd")
    shutil.copy(httpd.binary, binary)
    old = start_from(binary)
    new: Optional[subprocess.Popen] = None
    try:
        config = write_config(Path(folder) / "exporter.yaml", "resolve_interval: 1\n"
                              + config_text(binary).split("  - name: demo_request_duration")[0])
        exporter = exporters(config)
        get(old, "/", 2)
        key = 'demo_requests_total{route="/",status="200"}'
        wait_for(lambda: exporter.samples().get(key) == 2.0, 10, "the old binary's requests")
        shutil.copy(httpd.binary, binary + ".new")
        os.rename(binary + ".new", binary)  # an upgrade: a new inode at the same path
        old.terminate()
        old.wait(10)
        new = start_from(binary)
        wait_for(lambda: exporter.said("was replaced"), 15, "the replacement to be noticed")
        wait_for(lambda: exporter.said("metric demo_requests up") == 2, 30, "the new file to be attached")
        get(new, "/", 3)
        wait_for(lambda: exporter.samples().get(key) == 3.0, 10, "the new binary's requests")
        assert exporter.samples()['usdtkit_exporter_metric_up{metric="demo_requests"}'] == 1.0
    finally:
        for proc in (old, new):
            if proc is not None:
                proc.kill()
                proc.wait()
                proc.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_selected_pid_that_exits_marks_its_metric_down(tmp_path, exporters):
    service = demo_services.start_httpd()
    try:
        config = write_config(tmp_path / "exporter.yaml", "resolve_interval: 1\n"
                              + config_text(service.binary).split("  - name: demo_request_duration")[0]
                              + f"    pid: {service.pid}\n")
        exporter = exporters(config)
        demo_services.drive([service], 2, routes=["/"])
        key = 'demo_requests_total{route="/",status="200"}'
        wait_for(lambda: exporter.samples().get(key) == 2.0, 10, "2 requests counted")
    finally:
        service.stop()
    up = 'usdtkit_exporter_metric_up{metric="demo_requests"}'
    wait_for(lambda: exporter.samples().get(up) == 0.0, 15, "the metric to go down")
    wait_for(lambda: exporter.said(f"metric demo_requests down: pid {service.pid} exited") == 1, 5, "the reason")
    assert key not in exporter.samples()


def requests_by_id(tmp_path, httpd, exporters, option: str):
    """An exporter counting the demo's requests by id (a new label value per request), with ``option``."""
    config = write_config(tmp_path / "exporter.yaml", f"""\
metrics:
  - name: demo_requests_by_id
    type: counter
    probe: usdt:{httpd.binary}:demo_httpd:request__done
    labels: {{id: arg0}}
    {option}
    pid: {httpd.pid}
""")
    return exporters(config)


def sample_reaches(exporter, key: str, value: float, timeout: float, what: str) -> Dict[str, float]:
    return wait_for(lambda: (lambda s: s if s.get(key) == value else None)(exporter.samples()), timeout, what)


def test_series_over_the_limit_are_counted_not_merged(tmp_path, httpd, exporters):
    exporter = requests_by_id(tmp_path, httpd, exporters, "series_limit: 3")
    demo_services.drive([httpd], 10, routes=["/"])
    dropped = 'usdtkit_exporter_series_dropped{metric="demo_requests_by_id"}'
    samples = sample_reaches(exporter, dropped, 7.0, 10, "7 series dropped")
    kept = {k: v for k, v in samples.items() if k.startswith("demo_requests_by_id_total{")}
    assert len(kept) == 3 and set(kept.values()) == {1.0}  # one request each: nothing merged into them
    assert samples['usdtkit_exporter_probe_hits_total{metric="demo_requests_by_id"}'] == 10.0
    # the kernel's own accounting of the metric's program: it ran once per request, and took some time
    assert samples['usdtkit_exporter_bpf_program_runs_total{metric="demo_requests_by_id"}'] == 10.0
    assert samples['usdtkit_exporter_bpf_program_run_time_seconds_total{metric="demo_requests_by_id"}'] > 0


def test_demo_with_prometheus_prints_promql_answers_that_match_the_load():
    result = subprocess.run([sys.executable, "-m", "usdtkit.cli.main", "demo", "--prometheus", "--requests", "4"],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    assert "32 requests in Prometheus; matches the 32 requests sent." in result.stdout
    rates = result.stdout.split("request rate by route (per second):")[1].split("p99 latency")[0]
    assert all(float(line.split()[-1]) > 0 for line in rates.splitlines()[2:] if line.strip())
    p99 = result.stdout.split("p99 latency by route:")[1].split("requests by route")[0]
    slow = [line for line in p99.splitlines() if line.split()[:1] == ["/slow"]]
    assert slow and 5 < float(slow[0].split()[-2]) < 1000, p99  # /slow sleeps about 20 ms


PG_BIN = "/usr/lib/postgresql/15/bin"


@pytest.fixture
def postgres_cluster():
    """A throwaway PostgreSQL 15 cluster run by the postgres user, reachable only by its socket folder."""
    if not os.path.exists(f"{PG_BIN}/postgres"):
        pytest.fail("postgresql-15 is missing: ./dev.sh test installs it")
    folder = tempfile.mkdtemp(prefix="usdtkit-pg-")
    shutil.chown(folder, "postgres", "postgres")
    data = os.path.join(folder, "data")
    run_as = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]  # exec: signals reach postgres
    subprocess.run([*run_as, f"{PG_BIN}/initdb", "-D", data, "-A", "trust"], check=True, capture_output=True)
    port = str(free_port())
    server = subprocess.Popen([*run_as, f"{PG_BIN}/postgres", "-D", data, "-p", port, "-k", folder, "-c",
                               "listen_addresses="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run([f"{PG_BIN}/pg_isready", "-h", folder, "-p", port],
                                        capture_output=True).returncode == 0, 60, "postgres to accept connections")

        def psql(*queries: str) -> None:
            argv = [*run_as, "psql", "-h", folder, "-p", port, "-X", "-q"]
            for query in queries:
                argv += ["-c", query]
            subprocess.run(argv, check=True, capture_output=True)

        psql.postmaster = server.pid  # setpriv execs postgres: the server's pid is the postmaster's
        yield psql
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_postgres_queries_through_the_issue_config(tmp_path, postgres_cluster, exporters):
    postgres = f"{PG_BIN}/postgres"
    config = write_config(tmp_path / "exporter.yaml", f"""\
metrics:
  - name: pg_commits
    help: Transactions committed
    type: counter
    probe: usdt:{postgres}:postgresql:transaction__commit
    labels: {{comm: comm}}
  - name: pg_query_duration_seconds
    help: Query latency by query text
    type: histogram
    start: usdt:{postgres}:postgresql:query__start
    done: usdt:{postgres}:postgresql:query__done
    key: arg0
    labels: {{query: str(arg0)}}
  - name: pg_queries
    type: counter
    probe: usdt:{postgres}:postgresql:query__start
    labels: {{query: str(arg0)}}
""")
    exporter = exporters(config)
    prometheus = start_prometheus(exporter.port, tmp_path)
    try:
        wait_for(lambda: prometheus.query('up{job="usdtkit"}') == {"": 1.0}, 30, "a first scrape")
        marker = "select 17 as usdtkit_marker"
        postgres_cluster(*[marker] * 6, "select pg_sleep(0.05)")
        wait_for(lambda: prometheus.query(f'pg_queries_total{{query="{marker}"}}') == {marker: 6.0}, 30,
                 "6 marker queries")
        wait_for(lambda: prometheus.query(f'pg_query_duration_seconds_count{{query="{marker}"}}') == {marker: 6.0},
                 30, "6 marker latencies")
        sleep = prometheus.query('histogram_quantile(0.5, pg_query_duration_seconds_bucket'
                                 '{query="select pg_sleep(0.05)"})')
        assert 0.04 < sleep["select pg_sleep(0.05)"] < 0.5, sleep
        commits = prometheus.query("sum(pg_commits_total)")
        assert commits[""] >= 7, commits  # each query is a transaction (other backends may commit too)
    finally:
        prometheus.stop()
    assert exporter.stop() == 0


def test_series_that_stop_changing_are_forgotten_in_the_kernel_too(tmp_path, httpd, exporters):
    exporter = requests_by_id(tmp_path, httpd, exporters, "series_ttl: 1")
    demo_services.drive([httpd], 5, routes=["/"])
    forgotten = 'usdtkit_exporter_series_forgotten_total{metric="demo_requests_by_id"}'
    samples = sample_reaches(exporter, forgotten, 5.0, 15, "5 series forgotten")
    assert not [k for k in samples if k.startswith("demo_requests_by_id_total{")]
    demo_services.drive([httpd], 2, routes=["/"])  # new ids make new series, counted from zero
    samples = wait_for(lambda: (lambda s: s if len([k for k in s if k.startswith("demo_requests_by_id_total{")]) == 2
                                else None)(exporter.samples()), 10, "2 new series")
    assert samples['usdtkit_exporter_probe_hits_total{metric="demo_requests_by_id"}'] == 7.0
    assert samples['usdtkit_exporter_losses_total{kind="lost_keys",metric="demo_requests_by_id"}'] == 0.0


def test_label_values_get_names_and_comm_selects_processes(tmp_path, httpd, exporters):
    with open(f"/proc/{httpd.pid}/comm") as handle:
        comm = handle.read().strip()
    config = write_config(tmp_path / "exporter.yaml", f"""\
metrics:
  - name: demo_requests_by_status
    type: counter
    probe: usdt:{httpd.binary}:demo_httpd:request__done
    labels: {{status: arg1}}
    label_values: {{status: {{"200": ok, "404": not_found}}}}
    comm: {comm}
  - name: demo_requests_elsewhere
    type: counter
    probe: usdt:{httpd.binary}:demo_httpd:request__done
    comm: nobody_by_that
  - name: demo_sizes
    type: histogram
    probe: usdt:{httpd.binary}:demo_httpd:request__done
    value: arg3
    labels: {{route: str(arg2), status: arg1}}
    label_values: {{status: {{"200": ok, "404": not_found}}}}
    pid: {httpd.pid}
""")
    exporter = exporters(config)
    demo_services.drive([httpd], 3)
    want = {'demo_requests_by_status_total{status="ok"}': 9.0, 'demo_requests_by_status_total{status="not_found"}': 3.0}
    samples = wait_for(lambda: (lambda s: s if all(s.get(k) == v for k, v in want.items()) else None)(
        exporter.samples()), 15, "named status counts")
    assert samples["demo_requests_elsewhere_total"] == 0.0  # no process has that comm
    sizes = {k: v for k, v in samples.items() if k.startswith("demo_sizes_count{")}
    assert sizes['demo_sizes_count{route="/",status="ok"}'] == 3.0 and sum(sizes.values()) == 12.0, sizes
