"""The scope of usdtkit.instrument on real files: the application's folder, the standard library,
site-packages inside the application, usdtkit itself, and include/exclude globs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import usdtkit.instrument.scope as scope_module
from usdtkit.errors import UsageError
from usdtkit.instrument.scope import Decider, Scope


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "models.py").write_text("")
    site = tmp_path / "app" / ".venv" / "lib" / "python3" / "site-packages"
    site.mkdir(parents=True)
    (site / "dep.py").write_text("")
    return tmp_path / "app"


def test_default_scope_is_the_applications_own_code(app: Path, tmp_path: Path):
    scope = Scope(root=str(app))
    assert scope.covers("app.models:Order.save", str(app / "models.py"))
    assert scope.covers("__main__:main", "<stdin>")  # __main__ wherever it comes from
    assert not scope.covers("json:dumps", json.__file__)  # the standard library
    assert not scope.covers("dep:run", str(app / ".venv/lib/python3/site-packages/dep.py"))
    assert not scope.covers("other:f", str(tmp_path / "elsewhere.py"))  # outside the folder
    assert not scope.covers("x:f", "<string>")
    assert not scope.covers("usdtkit.instrument.calls:make_calls.<locals>.enter", scope_module.__file__)


def test_a_relative_file_name_is_read_from_the_directory_the_scope_was_made_in(app: Path, monkeypatch):
    monkeypatch.chdir(app)
    scope = Scope(root=str(app))
    monkeypatch.chdir("/")
    assert scope.covers("models:f", "models.py")


def test_include_replaces_the_default_scope_and_exclude_takes_out(app: Path):
    scope = Scope(include=["json*", "app.*"], exclude=["*:_*", "app.models:Order.*"], root=str(app))
    assert scope.covers("json.encoder:JSONEncoder.encode", json.__file__)  # the standard library, asked for
    assert scope.covers("app.models:save", str(app / "models.py"))
    assert not scope.covers("app.models:_helper", str(app / "models.py"))
    assert not scope.covers("app.models:Order.save", str(app / "models.py"))
    assert not scope.covers("__main__:main", str(app / "main.py"))  # not included
    assert not Scope(include=["*"]).covers("usdtkit.instrument.scope:Scope.covers", scope_module.__file__)


@pytest.mark.parametrize("bad", ["", "  ", None])
def test_an_empty_glob_is_refused(bad):
    with pytest.raises(UsageError, match="not a glob on module:qualname"):
        Scope(include=["a*", bad])


def sample(x):
    return x


def test_the_decider_names_each_code_object_once(app: Path):
    decider = Decider(Scope(root=os.path.dirname(__file__)))
    code = sample.__code__
    info = decider(code, globals())
    assert info == (f"{__name__}:sample".encode(), code.co_filename.encode(), code.co_firstlineno)
    assert decider.cache == {code: info}
    assert Decider(Scope(root=str(app)))(code, globals()) is None  # this file is outside app/
    code = compile("def f(): pass", "ab.py", "exec").co_consts[0]
    assert Decider(Scope(include=["*"]))(code, {"__name__": "m\0n"})[0] == b"m?n:f"  # a C string has no NUL
