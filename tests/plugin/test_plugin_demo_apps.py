"""The pytest plugin used the way a user would: start the demo services under trace, drive them, and
assert on what their probes said."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from usdtkit import demo_services
from usdtkit.testing import ANY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_port(traced) -> int:
    line = traced.process.stdout.readline().decode()
    assert line.startswith("listening on "), line
    return int(line.split()[-1])


def get(port: int, path: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            reply.read()
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def httpd_binary() -> str:
    return demo_services.build_httpd()


def test_c_service_contract(traced_process, httpd_binary):
    app = traced_process([httpd_binary, "--requests", "6"], "usdt::demo_httpd:request__done",
                         "usdt::demo_httpd:request__start", strings=["arg2"], stdout=subprocess.PIPE)
    port = read_port(app)
    for path in ("/", "/", "/items/3", "/slow", "/missing", "/"):
        get(port, path)
    assert app.wait(timeout=10) == 0
    app.expect("request__start").fired(times=6).with_args(ANY, ANY, ANY, ANY)
    done = app.expect("demo_httpd:request__done").fired(times=6)
    done.with_args(ANY, 200, "/", ANY, times=3).with_args(ANY, 404, "other").with_args(ANY, 200, "/slow")
    done.with_args(ANY, 200, "/items", len("item 0\nitem 1\nitem 2\n"))
    done.never_with(ANY, 500)


def test_python_service_attached_while_running(usdtkit_trace, expect_probe):
    # Runtime providers exist once the service has loaded them: attach to the running process.
    service = demo_services.start_pyservice(requests=4)
    try:
        session = usdtkit_trace("usdt::demo_pyservice:request__done", pid=service.pid, strings=["arg1"])
        for path in ("/", "/items/2", "/slow", "/nope"):
            service.get(path)
        service.process.wait(timeout=10)
        session.run(duration=0.1)
        expect_probe(session, "request__done").fired(times=4).with_args(ANY, "/slow", 200) \
            .with_args(ANY, "other", 404).never_with(ANY, ANY, 500)
    finally:
        service.stop()


def test_provider_in_the_tests_own_process(provider_trace, expect_probe):
    from usdtkit.provider import Provider

    app = Provider("plugin_selftest")
    work = app.probe("work", int, str)
    span = app.span("step")
    session = provider_trace(app, latency=False)
    for i in range(5):
        if work.enabled:
            work(i, f"job-{i}")
        with span():
            time.sleep(0.001)
    expect_probe(session, "plugin_selftest:work").fired(times=5).with_args(3, ANY)
    expect_probe(session, "step_done").fired(times=5)
    app.close()


def test_latency_assertions(usdtkit_trace, httpd_binary, expect_probe):
    service = demo_services.start_httpd(requests=8)
    try:
        session = usdtkit_trace(f"usdt:{httpd_binary}:demo_httpd:request__start",
                                f"usdt:{httpd_binary}:demo_httpd:request__done", pid=service.pid, latency=True,
                                pair_keys=("arg0", "arg0"))
        for _ in range(4):
            service.get("/")
            service.get("/slow")
        service.process.wait(timeout=10)
        session.run(duration=0.1)
        done = expect_probe(session, "request__done").fired(times=8)
        done.latency_below(50, 15_000_000)  # half the requests are fast
        with pytest.raises(AssertionError, match=r"p99 latency of request__done below 5 ms, got .* ms"):
            done.latency_below(99, 5_000_000)  # the /slow ones take 20 ms
    finally:
        service.stop()


# ------------------------------------------------------------------- a suite that must fail
CONTRACT_TEST = textwrap.dedent('''
    import subprocess, urllib.request, urllib.error
    from usdtkit import demo_services
    from usdtkit.testing import ANY

    def get(port, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def test_no_server_errors(traced_process):
        binary = demo_services.build_httpd()
        app = traced_process([binary, "--requests", "10", *EXTRA], "usdt::demo_httpd:request__done",
                             strings=["arg2"], stdout=subprocess.PIPE)
        port = int(app.process.stdout.readline().split()[-1])
        for _ in range(10):
            get(port, "/")
        app.wait(timeout=10)
        app.expect("request__done").fired(times=10).never_with(ANY, 500)
''')


def run_suite(tmp_path, extra):
    test_file = tmp_path / "test_contract.py"
    test_file.write_text(CONTRACT_TEST.replace("*EXTRA", "*" + repr(extra)))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=ROOT))


def test_a_healthy_demo_passes_and_a_broken_one_fails_helpfully(tmp_path):
    healthy = run_suite(tmp_path, [])
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    broken = run_suite(tmp_path, ["--fail-every", "3"])
    assert broken.returncode == 1
    out = broken.stdout
    assert "expected demo_httpd:request__done never with arguments (ANY, 500)" in out or \
        "expected request__done never with arguments (ANY, 500)" in out, out
    assert "3 of 10 hits had them (first: (3, 500, '/'," in out  # ids 3, 6, 9
    assert "it fired 10 times: (1, 200, '/'," in out  # and what was seen


KILLED_TEST = textwrap.dedent('''
    import os, time
    from usdtkit import demo_services

    def test_hangs(traced_process, usdtkit_trace):
        binary = demo_services.build_httpd()
        app = traced_process([binary], "usdt::demo_httpd:request__done")
        usdtkit_trace(f"usdt:{binary}:demo_httpd:request__done")  # every process mapping the binary
        with open(os.environ["STATE_FILE"], "w") as f:
            f.write(str(app.pid))
        time.sleep(600)
''')


def test_a_killed_test_leaves_no_process_and_no_attachment(tmp_path, read_semaphore):
    # A bystander mapping the same binary: the kernel raises its semaphore while any trace of the
    # probe exists anywhere, so it shows when the killed suite's attachment is really gone.
    bystander = demo_services.start_httpd()
    try:
        check_killed_suite(tmp_path, bystander, read_semaphore)
    finally:
        bystander.stop()


def check_killed_suite(tmp_path, bystander, read_semaphore):
    binary = bystander.binary
    test_file = tmp_path / "test_killed.py"
    test_file.write_text(KILLED_TEST)
    state = tmp_path / "pid"
    suite = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(tmp_path),
                             env=dict(os.environ, PYTHONPATH=ROOT, STATE_FILE=str(state)))
    try:
        deadline = time.time() + 60
        while not (state.exists() and state.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        child = int(state.read_text())
        assert os.path.exists(f"/proc/{child}")
        assert read_semaphore(bystander.pid, binary, "request__done") > 0  # one count per call site
    finally:
        suite.kill()  # what a hard timeout does
        suite.wait(timeout=10)
    deadline = time.time() + 10
    while os.path.exists(f"/proc/{child}") and time.time() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{child}"), "the traced process outlived the killed test"
    deadline = time.time() + 10
    while read_semaphore(bystander.pid, binary, "request__done") and time.time() < deadline:
        time.sleep(0.05)
    assert read_semaphore(bystander.pid, binary, "request__done") == 0, "an attachment outlived the test"


SKIPPING_TEST = textwrap.dedent('''
    import pytest

    @pytest.mark.bpf
    def test_needs_a_tool_that_is_missing():
        pytest.skip("some reference tool is not installed")

    def test_plain_skip():
        pytest.skip("not a BPF test")
''')


def test_a_bpf_test_that_skips_fails_where_bpf_is_required(tmp_path):
    test_file = tmp_path / "test_skips.py"
    test_file.write_text(SKIPPING_TEST)

    def run(**env):
        environment = {k: v for k, v in os.environ.items() if k not in ("CI", "USDTKIT_REQUIRE_BPF")}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", str(test_file)],
                              capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
                              env=dict(environment, PYTHONPATH=ROOT, **env))

    relaxed = run()
    assert relaxed.returncode == 0 and "2 skipped" in relaxed.stdout, relaxed.stdout
    strict = run(CI="1")
    assert strict.returncode == 1, strict.stdout
    assert "1 failed, 1 skipped" in strict.stdout
    assert "BPF test skipped where BPF is required" in strict.stdout
    assert "some reference tool is not installed" in strict.stdout
