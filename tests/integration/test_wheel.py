"""The package as users get it: an sdist that builds the native library, a wheel built from that sdist,
installed with pip into a fresh venv (``--system-site-packages`` for bcc), run from another folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"  # the Python that sees Debian's bcc


def run(*argv: str, cwd: Path, timeout: float = 600, env: dict = None) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=env or {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, f"{' '.join(argv)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel built from an sdist of this checkout's files (tracked and new,
    nothing ignored: no build products of the checkout leak in)."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip("needs Debian's /usr/bin/python3")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    dist = work / "dist"
    run(sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})",
        cwd=source)
    (sdist,) = dist.glob("usdtkit-*.tar.gz")
    wheels = work / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
        str(sdist), cwd=work)
    venv = work / "venv"
    run(SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv), cwd=work)
    (wheel,) = wheels.glob("usdtkit-*.whl")
    run(str(venv / "bin" / "pip"), "install", "-q", str(wheel), cwd=work)
    return venv


def test_the_sdist_and_the_wheel_carry_what_they_need(installed):
    work = installed.parent
    (sdist,) = (work / "dist").glob("usdtkit-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "native/provider.c", "native/sdt_internal.h", "native/python/fastfire.c",
            "demo_apps/httpd.c", "demo_apps/pyservice.py"} <= names
    assert not any(n.endswith((".so", ".pyc")) or n.startswith("demo_apps/build/") for n in names)
    (wheel,) = (work / "wheels").glob("usdtkit-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
        meta = next(whl.read(n).decode() for n in files if n.endswith(".dist-info/METADATA"))
    assert {"usdtkit/_native/libstapsdt.so", "usdtkit/_demo_apps/httpd.c", "usdtkit/_demo_apps/pyservice.py",
            "usdtkit/_demo_apps/hello_usdt.c"} <= files
    assert any(n.endswith(".dist-info/LICENSE") or n.endswith("licenses/LICENSE") for n in files), sorted(files)
    import usdtkit

    assert f"Version: {usdtkit.__version__}" in meta
    assert "Classifier: License :: OSI Approved :: Apache Software License" in meta


def test_the_installed_command_runs_from_any_folder(installed, tmp_path):
    usdtkit = str(installed / "bin" / "usdtkit")
    import usdtkit as here

    assert run(usdtkit, "--version", cwd=tmp_path).stdout.strip() == f"usdtkit {here.__version__}"
    python = str(installed / "bin" / "python")
    where = run(python, "-c", "import usdtkit, usdtkit.provider; print(usdtkit.__file__)", cwd=tmp_path).stdout
    assert where.startswith(str(installed)), where  # the wheel's copy, not this checkout
    listed = json.loads(run(usdtkit, "list", "--json", "/usr/bin/python3.11", cwd=tmp_path).stdout)
    assert listed


@pytest.mark.bpf
def test_the_installed_demo_traces_real_data_from_another_folder(installed, tmp_path):
    result = run(str(installed / "bin" / "usdtkit"), "demo", "--json", "--requests", "3", cwd=tmp_path)
    doc = json.loads(result.stdout)
    assert doc["requests_traced"] == 3 * 4 * 2
    for name in ("demo_httpd", "demo_pyservice"):
        statuses = {tuple(row["key"][1:]): row["count"] for row in doc["services"][name]["status_counts"]["counts"]}
        assert statuses == {("/", 200): 3, ("/items", 200): 3, ("/slow", 200): 3, ("other", 404): 3}, name
