"""Kernel header discovery and the Debian overlay, on synthetic trees (no root, no system writes)."""
from __future__ import annotations

import os

import pytest

from usdtkit.bpf import kernel_headers


def make_debian_halves(root, version="6.1.0-56", flavour="amd64"):
    common = root / f"linux-headers-{version}-common"
    flav = root / f"linux-headers-{version}-{flavour}"
    (common / "include/linux").mkdir(parents=True, exist_ok=True)
    (common / "include/linux/kconfig.h").write_text("/* kconfig */\n")
    (common / "arch/x86/include/asm").mkdir(parents=True, exist_ok=True)
    (common / "arch/x86/include/asm/ptrace.h").write_text("/* ptrace */\n")
    (common / "Makefile").write_text("common\n")
    (flav / "include/generated").mkdir(parents=True, exist_ok=True)
    (flav / "include/generated/autoconf.h").write_text("#define CONFIG_X 1\n")
    (flav / "arch/x86/include/generated").mkdir(parents=True, exist_ok=True)
    (flav / "Makefile").write_text("flavour\n")
    return common, flav


@pytest.fixture
def machine(monkeypatch):
    monkeypatch.setattr(kernel_headers.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)


def test_overlay_is_the_union_of_both_halves(tmp_path, machine):
    src = tmp_path / "src"
    common, flav = make_debian_halves(src)
    headers = kernel_headers.locate(release="9.9.9-test", src_root=str(src), cache=str(tmp_path / "cache"))
    assert headers.kind == "overlay"
    tree = headers.path
    assert headers.source_override == tree
    assert tree.startswith(str(tmp_path / "cache"))
    assert open(os.path.join(tree, "include/linux/kconfig.h")).read() == "/* kconfig */\n"
    assert open(os.path.join(tree, "include/generated/autoconf.h")).read().startswith("#define")
    assert os.path.isdir(os.path.join(tree, "arch/x86/include/asm"))
    assert os.path.isdir(os.path.join(tree, "arch/x86/include/generated"))
    assert open(os.path.join(tree, "Makefile")).read() == "flavour\n"  # the configured half wins
    # every leaf is a symlink into the packages: nothing copied
    assert os.path.islink(os.path.join(tree, "include/linux"))
    # a second call reuses the tree
    again = kernel_headers.locate(release="9.9.9-test", src_root=str(src), cache=str(tmp_path / "cache"))
    assert again.path == tree


def test_newest_version_and_plain_flavour_win(tmp_path, machine):
    src = tmp_path / "src"
    make_debian_halves(src, "6.1.0-50")
    make_debian_halves(src, "6.1.0-56", "cloud-amd64")
    make_debian_halves(src, "6.1.0-56")
    make_debian_halves(src, "6.1.0-57", "arm64")  # another architecture: ignored
    pairs = kernel_headers.find_debian_pairs(str(src))
    assert [os.path.basename(f) for _, _, f in pairs] == [
        "linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-cloud-amd64", "linux-headers-6.1.0-50-amd64"]


def test_user_setting_is_respected(tmp_path, machine, monkeypatch):
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path))
    headers = kernel_headers.locate(release="9.9.9-test", src_root=str(tmp_path / "none"))
    assert headers.kind == "env" and headers.source_override is None


def test_missing_headers_say_what_to_install(tmp_path, machine, monkeypatch):
    monkeypatch.setattr(kernel_headers.os.path, "exists",
                        lambda p, _real=os.path.exists: False if p.startswith("/sys/kernel") else _real(p))
    with pytest.raises(kernel_headers.HeadersNotFound) as info:
        kernel_headers.locate(release="9.9.9-test", src_root=str(tmp_path / "none"), cache=str(tmp_path))
    assert "linux-headers-amd64" in str(info.value)


def test_environment_is_set_only_during_compilation(tmp_path, monkeypatch):
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    headers = kernel_headers.KernelHeaders("overlay", str(tmp_path), str(tmp_path))
    with kernel_headers.bcc_environment(headers):
        assert os.environ["BCC_KERNEL_SOURCE"] == str(tmp_path)
    assert "BCC_KERNEL_SOURCE" not in os.environ
