"""Kernel header discovery and the Debian overlay, on synthetic trees (no system writes; planting
another user's tree needs root)."""
from __future__ import annotations

import os
import tempfile

import pytest

from usdtkit.bpf import kernel_headers

OTHER = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's files needs root")


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
    # every link points into one of the two halves
    for folder, dirs, files in os.walk(tree):
        for name in dirs + files:
            link = os.path.join(folder, name)
            if os.path.islink(link):
                assert os.readlink(link).startswith((str(common) + os.sep, str(flav) + os.sep)), link
    # a second call reuses the tree as it is
    again = kernel_headers.locate(release="9.9.9-test", src_root=str(src), cache=str(tmp_path / "cache"))
    assert again.path == tree and os.stat(tree).st_ino == os.stat(again.path).st_ino


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


def plant_tree(tree, how, elsewhere, common):
    """A complete-looking header tree at ``tree`` that is not the overlay usdtkit would build."""
    if how in ("outside-link", "escaping-link"):
        (elsewhere / "include/linux").mkdir(parents=True)
        (elsewhere / "include/linux/kconfig.h").write_text("/* planted */\n")
        (elsewhere / "include/generated").mkdir(parents=True)
        (elsewhere / "include/generated/autoconf.h").write_text("/* planted */\n")
        tree.mkdir(parents=True, mode=0o700)
        escape = f"{common}/../../{elsewhere.name}/include"  # starts inside the half, ends outside
        (tree / "include").symlink_to(elsewhere / "include" if how == "outside-link" else escape)
        return
    (tree / "include/linux").mkdir(parents=True)
    (tree / "include/linux/kconfig.h").write_text("/* planted */\n")
    (tree / "include/generated").mkdir(parents=True)
    (tree / "include/generated/autoconf.h").write_text("/* planted */\n")
    if how == "other-owner":
        for folder, dirs, files in os.walk(tree):
            for name in [folder] + [os.path.join(folder, n) for n in dirs + files]:
                os.lchown(name, OTHER, OTHER)
    elif how == "group-writable":
        tree.chmod(0o775)
    # "copied-files": ours and private, but real files where the overlay has links into /usr/src


@needs_root
@pytest.mark.parametrize("how", ["other-owner", "group-writable", "outside-link", "escaping-link", "copied-files"])
def test_planted_tree_in_the_cache_is_rebuilt_not_used(tmp_path, machine, how):
    src = tmp_path / "src"
    common, _ = make_debian_halves(src)
    cache = tmp_path / "cache"
    planted = cache / "kernel-headers" / "linux-headers-6.1.0-56-amd64"
    (cache / "kernel-headers").mkdir(parents=True, mode=0o700)
    plant_tree(planted, how, tmp_path / "elsewhere", common)
    headers = kernel_headers.locate(release="9.9.9-test", src_root=str(src), cache=str(cache))
    assert open(os.path.join(headers.path, "include/linux/kconfig.h")).read() == "/* kconfig */\n"
    assert open(os.path.join(headers.path, "include/generated/autoconf.h")).read() == "#define CONFIG_X 1\n"
    for folder, dirs, files in os.walk(headers.path):
        info = os.lstat(folder)
        assert info.st_uid == os.geteuid() and not info.st_mode & 0o022, folder
    assert os.listdir(cache / "kernel-headers") == ["linux-headers-6.1.0-56-amd64"]  # nothing stale left


@needs_root
@pytest.mark.parametrize("how", ["other-owner", "symlink"])
def test_planted_headers_folder_is_refused_or_avoided(tmp_path, machine, monkeypatch, how):
    src = tmp_path / "src"
    make_debian_halves(src)
    monkeypatch.setattr(kernel_headers.os.path, "exists",
                        lambda p, _real=os.path.exists: False if p.startswith("/sys/kernel") else _real(p))
    cache = tmp_path / "xdg" / "usdtkit"
    cache.mkdir(parents=True, mode=0o700)
    planted = tmp_path / "planted"
    planted.mkdir()
    if how == "symlink":
        (cache / "kernel-headers").symlink_to(planted)
    else:
        os.chown(planted, OTHER, OTHER)
        planted.rename(cache / "kernel-headers")
    # a cache named by the caller: refused, saying why
    with pytest.raises(kernel_headers.HeadersNotFound) as info:
        kernel_headers.locate(release="9.9.9-test", src_root=str(src), cache=str(cache))
    assert str(cache / "kernel-headers") in str(info.value)
    assert "symlink" in str(info.value) if how == "symlink" else "uid 65534" in str(info.value)
    # the usual cache: the per-user temp folder is used instead
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    headers = kernel_headers.locate(release="9.9.9-test", src_root=str(src))
    assert headers.path.startswith(str(tmp_path / "tmp" / f"usdtkit-{os.geteuid()}" / "kernel-headers") + os.sep)
    assert os.listdir(cache / "kernel-headers") == []  # nothing made in the planted folder


@needs_root
def test_header_halves_owned_by_another_user_are_not_used(tmp_path, machine, monkeypatch):
    src = tmp_path / "src"
    common, flav = make_debian_halves(src)
    os.chown(flav, OTHER, OTHER)
    monkeypatch.setattr(kernel_headers.os.path, "exists",
                        lambda p, _real=os.path.exists: False if p.startswith("/sys/kernel") else _real(p))
    with pytest.raises(kernel_headers.HeadersNotFound, match="uid 65534"):
        kernel_headers.locate(release="9.9.9-test", src_root=str(src), cache=str(tmp_path / "cache"))
