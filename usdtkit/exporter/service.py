"""The long-running exporter: one trace session per metric, kept in step with the config and the targets.

* **Start**: every metric is planned and attached; one that cannot be (its binary is not installed yet,
  its process is gone) is *down*: ``usdtkit_exporter_metric_up`` is 0 and the reason is logged, and it
  is tried again at every resolve tick.
* **SIGHUP** reloads the file: an unchanged metric keeps its session and so its values, a changed or
  new one is attached, a removed one detached.  A file that does not validate is refused whole (logged)
  and the running configuration stays.
* **Resolve ticks** (``resolve_interval``): a traced file that was replaced (another inode at the same
  path, as a package upgrade does) gets a new plan and session, swapped in once attached; a process
  selected by ``pid`` that exited marks its metric down for good (its pid may be reused by another).
* **SIGTERM/SIGINT** detach everything and the process exits 0.

Signals only set flags; all work happens in the main loop.  Scrapes run in the HTTP server's threads
and read sessions under the same lock the loop holds to swap them.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import start_wsgi_server
from prometheus_client.process_collector import ProcessCollector

from ..bpf.prog_stats import close_stats, enable_run_time_stats
from ..errors import UsdtkitError
from ..plan.plan import make_plan
from ..tracing.session import Session
from .collector import ExporterCollector, MetricState
from .config import ExporterConfig, load_config
from .metrics import MetricSpec, to_request

STEP_S = 0.2
_log = logging.getLogger("usdtkit.exporter")


@dataclass
class Running(MetricState):
    """A metric's state in the service: the files its session traces (path to device and inode when
    planned) and whether it can come back (a selected pid that exited cannot)."""

    files: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    reason: str = ""
    final: bool = False


def _files(session: Session) -> Dict[str, Tuple[int, int]]:
    return {obj.path: (obj.device, obj.inode) for obj in session.plan.objects.objects
            if not obj.path.startswith("/proc/")}


def _replaced(files: Dict[str, Tuple[int, int]]) -> Optional[str]:
    """The first traced path that now names another file (None while a path is absent: an upgrade in
    progress is traced on as it was until its new file is in place)."""
    for path, (device, inode) in files.items():
        try:
            info = os.stat(path)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) != (device, inode):
            return path
    return None


def open_session(spec: MetricSpec) -> Session:
    """Plan and attach the trace of ``spec`` now."""
    plan = make_plan(to_request(spec))
    try:
        session = Session(plan, keep_events=0)
    except BaseException:
        plan.close()
        raise
    return session.attach()


class Exporter:
    """Serve the metrics of one config file until SIGTERM or SIGINT."""

    def __init__(self, config: ExporterConfig, host: str, port: int) -> None:
        self.config = config
        self.host, self.port = host, port
        self.lock = threading.Lock()
        self.metrics: Dict[str, Running] = {}
        self._flags: List[int] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ExporterCollector(self._states, self.lock))
        self.registry.register(ProcessCollector(registry=None))

    def _states(self) -> List[Running]:
        return list(self.metrics.values())

    # ------------------------------------------------------------------ sessions
    def _attach(self, state: Running) -> None:
        """Attach ``state``'s metric (outside the lock: compiling takes a while), then swap it in."""
        name = state.spec.name
        try:
            session = open_session(state.spec)
        except UsdtkitError as exc:
            if state.session is None:
                if state.up or state.reason != str(exc):
                    _log.warning("metric %s down: %s", name, exc)
                state.up, state.reason = False, str(exc)
            else:
                _log.warning("metric %s: cannot attach again (tracing on as before): %s", name, exc)
            return
        with self.lock:
            old, state.session, state.up, state.reason = state.session, session, True, ""
            state.files = _files(session)
        if old is not None:
            old.close()
        _log.info("metric %s up: %d probe sites", name, len(session.attachments))

    def _detach(self, state: Running, reason: str, final: bool = False) -> None:
        with self.lock:
            session, state.session, state.up, state.reason, state.final = state.session, None, False, reason, final
        if session is not None:
            session.close()
        _log.warning("metric %s down: %s", state.spec.name, reason)

    def apply(self, config: ExporterConfig) -> None:
        """Make the running metrics those of ``config``, keeping every unchanged one as it is."""
        wanted = {m.name: m for m in config.metrics}
        for name in [n for n in self.metrics if n not in wanted]:
            state = self.metrics[name]
            with self.lock:
                del self.metrics[name]
            if state.session is not None:
                state.session.close()
            _log.info("metric %s removed", name)
        for name, spec in wanted.items():
            if self.stopping:
                return  # attaching takes a while per metric: SIGTERM is not kept waiting for all of them
            state = self.metrics.get(name)
            if state is not None and state.spec.tracing_key() == spec.tracing_key():
                with self.lock:
                    state.spec = spec  # help text, series limit: read at the next scrape
                continue
            fresh = Running(spec)
            self._attach(fresh)
            with self.lock:
                old, self.metrics[name] = self.metrics.get(name), fresh
            if old is not None and old.session is not None:
                old.session.close()
        self.config = config

    def resolve(self) -> None:
        """Follow the targets: exited pids, replaced files, metrics that could not attach yet."""
        for state in list(self.metrics.values()):
            session = state.session
            if session is not None and state.spec.pid is not None:
                with self.lock:  # a scrape may be reading this session's maps
                    session.poll(0)
                if session.target_exited:
                    self._detach(state, f"pid {state.spec.pid} exited", final=True)
                    continue
            if session is None:
                if not state.final:
                    self._attach(state)
                continue
            path = _replaced(state.files)
            if path is not None:
                _log.info("metric %s: %s was replaced; tracing the new file", state.spec.name, path)
                self._attach(state)

    def reload(self) -> None:
        try:
            config = load_config(self.config.path)
        except UsdtkitError as exc:
            _log.error("reload refused, the running configuration stays: %s", exc)
            return
        self.apply(config)
        _log.info("reloaded %s: %d metrics", config.path, len(config.metrics))

    def close(self) -> None:
        """Detach every metric."""
        with self.lock:
            states, self.metrics = list(self.metrics.values()), {}
        for state in states:
            if state.session is not None:
                state.session.close()

    # ------------------------------------------------------------------ the loop
    def _on_signal(self, signum: int, frame: object) -> None:
        self._flags.append(signum)

    @property
    def stopping(self) -> bool:
        return signal.SIGTERM in self._flags or signal.SIGINT in self._flags

    def run(self, ready: Optional[Callable[["Exporter"], None]] = None) -> int:
        """Attach, serve, follow signals and targets; returns the exit code (0 after SIGTERM/SIGINT)."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
        server = None
        # The kernel counts the programs' run time only while someone asks (reference counted, so it
        # goes off again when the exporter ends, however it ends).
        run_time_stats = enable_run_time_stats()
        try:
            server, _ = start_wsgi_server(self.port, self.host, self.registry)  # a taken address fails first
            self.port = server.server_port
            self.apply(self.config)
            if ready is not None:
                ready(self)
            next_resolve = time.monotonic() + self.config.resolve_interval
            while True:
                flags, self._flags = self._flags, []
                if signal.SIGTERM in flags or signal.SIGINT in flags:
                    return 0
                if signal.SIGHUP in flags:
                    self.reload()
                if time.monotonic() >= next_resolve:
                    self.resolve()
                    next_resolve = time.monotonic() + self.config.resolve_interval
                time.sleep(STEP_S)
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
            self.close()
            close_stats(run_time_stats)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
