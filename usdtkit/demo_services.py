"""The bundled demo services: find, build, start, drive with load, and stop them.

Two small HTTP services on loopback, both instrumented with USDT probes:

* ``demo_httpd`` (C, ``demo_apps/httpd.c``): ``sys/sdt.h`` probes with semaphores, several call sites
  for ``request__done``, arguments of several widths and strings, and functions worth a uprobe;
* ``demo_pyservice`` (Python, ``demo_apps/pyservice.py``): probes declared with :mod:`usdtkit.provider`.

Used by ``usdtkit demo`` and by the pytest plugin's tests; everything started here is stopped by
:meth:`DemoService.stop` (also on errors), and the C service is compiled once into usdtkit's cache.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .privdir import cache_root
from .errors import EnvironmentProblem, TargetError

ROUTES = ("/", "/items/40", "/slow", "/missing")
ROUTE_NAMES = {"/": "/", "/items/40": "/items", "/slow": "/slow", "/missing": "other"}


def demo_apps_dir() -> Path:
    """Where the demo sources are: ``$USDTKIT_DEMO_APPS`` or ``demo_apps/`` next to the package."""
    configured = os.environ.get("USDTKIT_DEMO_APPS")
    path = Path(configured) if configured else Path(__file__).resolve().parent.parent / "demo_apps"
    if not (path / "httpd.c").is_file():
        raise TargetError(f"demo sources not found in {path} (set USDTKIT_DEMO_APPS to the demo_apps folder)")
    return path


def build_httpd(cache: Optional[str] = None) -> str:
    """Compile ``httpd.c`` once (per content) into the cache and return the binary's path."""
    source = demo_apps_dir() / "httpd.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    out_dir = Path(cache or cache_root()) / "demo"
    binary = out_dir / f"demo_httpd-{digest}"
    if binary.is_file():
        return str(binary)
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise EnvironmentProblem("no C compiler to build the demo (apt-get install gcc)")
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f".{binary.name}.{os.getpid()}"
    result = subprocess.run([compiler, "-O2", "-g", "-o", str(partial), str(source)], capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["compiler failed"])[-1]
        raise EnvironmentProblem(f"cannot build the demo service: {message} (is systemtap-sdt-dev installed?)")
    os.replace(partial, binary)
    return str(binary)


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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stdin):
            if stream:
                stream.close()


def _start(name: str, argv: List[str], env: Optional[Dict[str, str]] = None) -> DemoService:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
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
    return DemoService(name, process, port, argv[0])


def start_httpd(fail_every: int = 0, requests: int = 0) -> DemoService:
    binary = build_httpd()
    argv = [binary, "--port", "0"]
    if fail_every:
        argv += ["--fail-every", str(fail_every)]
    if requests:
        argv += ["--requests", str(requests)]
    return _start("demo_httpd", argv)


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
    service = _start("demo_pyservice", argv, env)
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
