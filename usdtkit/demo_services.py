"""The bundled demo services: find, build, start, drive with load, and stop them.

Two small HTTP services on loopback, both instrumented with USDT probes:

* ``demo_httpd`` (C, ``demo_apps/httpd.c``): ``sys/sdt.h`` probes with semaphores, several call sites
  for ``request__done``, arguments of several widths and strings, and functions worth a uprobe;
* ``demo_pyservice`` (Python, ``demo_apps/pyservice.py``): probes declared with :mod:`usdtkit.provider`.

Used by ``usdtkit demo`` and by the pytest plugin's tests; everything started here is stopped by
:meth:`DemoService.stop` (also on errors).  The C service is compiled once (per source content) into
usdtkit's private cache (:mod:`usdtkit.privdir`).  A binary found there runs only if no one but us (or
root) could have written it; anything else is rebuilt over, never run.  It is started from the checked
descriptor, so what runs is the file that was checked even if its path names another file by then.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import privdir
from .errors import EnvironmentProblem, TargetError, UnsafePath

ROUTES = ("/", "/items/40", "/slow", "/missing")
ROUTE_NAMES = {"/": "/", "/items/40": "/items", "/slow": "/slow", "/missing": "other"}


def demo_apps_dir() -> Path:
    """Where the demo sources are: ``$USDTKIT_DEMO_APPS``, else ``_demo_apps/`` inside the installed
    package (a wheel carries them there), else ``demo_apps/`` of the source checkout."""
    configured = os.environ.get("USDTKIT_DEMO_APPS")
    here = Path(__file__).resolve().parent
    bundled = here / "_demo_apps"
    path = Path(configured) if configured else bundled if bundled.is_dir() else here.parent / "demo_apps"
    if not (path / "httpd.c").is_file():
        raise TargetError(f"demo sources not found in {path} (set USDTKIT_DEMO_APPS to the demo_apps folder)")
    return path


def _compile(source: Path, out_dir: str, name: str) -> None:
    """Compile ``source`` in a private build folder and publish the binary as ``out_dir/name``."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise EnvironmentProblem("no C compiler to build the demo (apt-get install gcc)")
    work = tempfile.mkdtemp(prefix=".build-", dir=out_dir)
    try:
        built = os.path.join(work, name)
        result = subprocess.run([compiler, "-O2", "-g", "-o", built, str(source)], capture_output=True, text=True)
        if result.returncode != 0:
            message = (result.stderr.strip().splitlines() or ["compiler failed"])[-1]
            raise EnvironmentProblem(f"cannot build the demo service: {message} (is systemtap-sdt-dev installed?)")

        def copy(fd: int) -> None:
            with open(built, "rb") as src, open(fd, "wb", closefd=False) as dst:
                shutil.copyfileobj(src, dst)

        privdir.publish(out_dir, name, copy, mode=0o755)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _open_httpd(cache: Optional[str] = None) -> Tuple[str, int]:
    """The compiled service as its path and a descriptor checked by :func:`privdir.open_trusted`."""
    source = demo_apps_dir() / "httpd.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    out_dir = privdir.private_dir("demo", root=cache)
    binary = os.path.join(out_dir, f"demo_httpd-{digest}")
    try:
        return binary, privdir.open_trusted(binary, root=cache)
    except (FileNotFoundError, UnsafePath):
        pass  # not built yet, or possibly not built by us: build it over whatever is there
    _compile(source, out_dir, os.path.basename(binary))
    return binary, privdir.open_trusted(binary, root=cache)


def build_httpd(cache: Optional[str] = None) -> str:
    """Compile ``httpd.c`` once (per content) into the private cache and return the checked binary's path.

    ``cache`` names the cache root (by default the usual one, or its per-user fallback).
    """
    binary, fd = _open_httpd(cache)
    os.close(fd)
    return binary


def _terminate(process: "subprocess.Popen", grace: float) -> None:
    """SIGTERM, ``grace`` seconds to exit, then SIGKILL; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class DemoService:
    """A started demo service: its process, port, and the binary or provider object to trace."""

    name: str
    process: subprocess.Popen
    port: int
    binary: str
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def get(self, path: str, timeout: float = 5.0) -> int:
        """One GET request; returns the HTTP status."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as reply:
                reply.read()
                return reply.status
        except urllib.error.HTTPError as exc:
            exc.read()
            return exc.code

    def stop(self) -> None:
        _terminate(self.process, grace=5)
        for stream in (self.process.stdout, self.process.stdin):
            if stream:
                stream.close()


def _start(name: str, argv: List[str], binary: str, **popen: Any) -> DemoService:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **popen)
    lines = []
    try:
        for _ in range(3):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.startswith("listening on "):
                break
        if not lines or not lines[-1].startswith("listening on "):
            raise TargetError(f"{name} did not start: {' / '.join(lines) or 'no output'}")
        port = int(lines[-1].split()[-1])
    except BaseException:
        process.kill()
        process.wait()
        raise
    return DemoService(name, process, port, binary)


def start_httpd(fail_every: int = 0, requests: int = 0) -> DemoService:
    binary, fd = _open_httpd()
    argv = [binary, "--port", "0"]
    if fail_every:
        argv += ["--fail-every", str(fail_every)]
    if requests:
        argv += ["--requests", str(requests)]
    try:
        return _start("demo_httpd", privdir.fd_exec_argv(fd, argv), binary, pass_fds=(fd,))
    finally:
        os.close(fd)


def start_pyservice(fail_every: int = 0, requests: int = 0) -> DemoService:
    script = demo_apps_dir() / "pyservice.py"
    argv = [sys.executable, str(script), "--port", "0"]
    if fail_every:
        argv += ["--fail-every", str(fail_every)]
    if requests:
        argv += ["--requests", str(requests)]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    service = _start("demo_pyservice", argv, argv[0], env=env)
    probes_line = service.process.stdout.readline().strip()
    if probes_line.startswith("probes in "):
        service.extra["provider_path"] = probes_line[len("probes in "):]
    return service


def drive(services: Sequence[DemoService], per_route: int, routes: Sequence[str] = ROUTES,
          progress: Optional[Callable[[int, int], None]] = None, workers: int = 4) -> Dict[str, Dict[str, int]]:
    """Send ``per_route`` GETs of every route to every service; returns statuses seen per service."""
    jobs = [(s, r) for s in services for r in routes for _ in range(per_route)]
    seen: Dict[str, Dict[str, int]] = {s.name: {} for s in services}
    lock = threading.Lock()
    done = [0]

    def work(chunk: List[tuple]) -> None:
        for service, route in chunk:
            status = service.get(route)
            with lock:
                key = f"{ROUTE_NAMES.get(route, route)} {status}"
                seen[service.name][key] = seen[service.name].get(key, 0) + 1
                done[0] += 1
                if progress:
                    progress(done[0], len(jobs))

    threads = [threading.Thread(target=work, args=(jobs[i::workers],)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen


PROMETHEUS = "/usr/bin/prometheus"


class PrometheusServer:
    """A real Prometheus server on loopback (Debian's ``prometheus``) scraping one target every second,
    with its configuration and storage in ``workdir``; :meth:`query` asks its HTTP API."""

    def __init__(self, target: str, workdir: str, timeout: float = 60.0) -> None:
        if not os.path.exists(PROMETHEUS):
            raise EnvironmentProblem(f"{PROMETHEUS} is missing (apt-get install prometheus)")
        config = os.path.join(workdir, "prometheus.yml")
        with open(config, "w") as handle:
            handle.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                         "scrape_configs:\n  - job_name: usdtkit\n"
                         f"    static_configs: [{{targets: ['{target}']}}]\n")
        with socket.socket() as sock:  # a free port; Prometheus binds it right after
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log_path = os.path.join(workdir, "prometheus.log")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(workdir, 'data')}",
                 f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EnvironmentProblem(f"prometheus did not start (its log: {self.log_path})")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> Dict[str, float]:
        """An instant query: each series' label values (sorted by label name, without ``instance`` and
        ``job``) joined by ``,`` mapped to its value."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as reply:
            doc = json.load(reply)
        if doc.get("status") != "success":
            raise TargetError(f"prometheus refused {promql!r}: {doc.get('error')}")
        return {",".join(v for k, v in sorted(r["metric"].items()) if k not in ("__name__", "instance", "job")):
                float(r["value"][1]) for r in doc["data"]["result"]}

    def stop(self) -> None:
        _terminate(self.process, grace=30)
