"""plait.proxy.native: compiled modules are used only when they match the sources."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import plait.proxy
from plait.proxy import http1, native


def _build(tmp_path: Path) -> tuple[Path, Path]:
    """A source tree and a 'compiled' folder that is current for it (empty stand-ins
    for the extension modules: select() only decides, it loads nothing)."""
    root = tmp_path / "src"
    (root / "proxy").mkdir(parents=True)
    (root / "proxy" / "http1.py").write_text("x = 1\n")
    compiled = tmp_path / "compiled"
    compiled.mkdir()
    suffix = native.interpreter()["ext_suffix"]
    for name in (*native.MODULES, native.LIBRARY):
        (compiled / f"{name}{suffix}").write_bytes(b"")
    stamp = {
        "interpreter": native.interpreter(),
        "modules": list(native.MODULES),
        "sources": native.source_digest(root),
    }
    (compiled / "stamp.json").write_text(json.dumps(stamp))
    return root, compiled


@pytest.fixture(autouse=True)
def _keep_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "STATE", native.STATE)
    monkeypatch.delenv("PLAIT_PURE", raising=False)


def test_a_current_build_goes_first_on_the_package_path(tmp_path: Path) -> None:
    root, compiled = _build(tmp_path)
    path = ["/src/plait/proxy"]
    state = native.select(path, compiled, root)
    assert path == [str(compiled), "/src/plait/proxy"]
    assert state == native.STATE == f"compiled (mypyc, {len(native.MODULES)} modules)"
    native.select(path, compiled, root)
    assert path.count(str(compiled)) == 1


def _interpreted(tmp_path: Path, root: Path, compiled: Path) -> str:
    path = ["/src/plait/proxy"]
    state = native.select(path, compiled, root)
    assert path == ["/src/plait/proxy"], "nothing compiled may be used"
    assert state.startswith("interpreted: ")
    return state


def test_an_edited_source_runs_interpreted(tmp_path: Path) -> None:
    root, compiled = _build(tmp_path)
    (root / "proxy" / "http1.py").write_text("x = 2\n")
    state = _interpreted(tmp_path, root, compiled)
    assert "the sources changed since the build" in state


def test_a_new_source_file_runs_interpreted(tmp_path: Path) -> None:
    root, compiled = _build(tmp_path)
    (root / "proxy" / "new.py").write_text("")
    assert "sources changed" in _interpreted(tmp_path, root, compiled)


def test_plait_pure_runs_interpreted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, compiled = _build(tmp_path)
    monkeypatch.setenv("PLAIT_PURE", "1")
    assert _interpreted(tmp_path, root, compiled) == "interpreted: PLAIT_PURE is set"


def test_no_build_runs_interpreted(tmp_path: Path) -> None:
    state = _interpreted(tmp_path, tmp_path, tmp_path / "nothing")
    assert state == "interpreted: not built (make native)"


def test_a_build_for_another_interpreter_runs_interpreted(tmp_path: Path) -> None:
    root, compiled = _build(tmp_path)
    stamp = json.loads((compiled / "stamp.json").read_text())
    stamp["interpreter"]["python"] = "3.11.0 (elsewhere)"
    (compiled / "stamp.json").write_text(json.dumps(stamp))
    assert "built for another interpreter" in _interpreted(tmp_path, root, compiled)


def test_a_build_of_other_modules_runs_interpreted(tmp_path: Path) -> None:
    root, compiled = _build(tmp_path)
    stamp = json.loads((compiled / "stamp.json").read_text())
    stamp["modules"] = stamp["modules"][:-1]
    (compiled / "stamp.json").write_text(json.dumps(stamp))
    assert "built for other modules" in _interpreted(tmp_path, root, compiled)


def test_a_missing_extension_runs_interpreted(tmp_path: Path) -> None:
    root, compiled = _build(tmp_path)
    suffix = native.interpreter()["ext_suffix"]
    (compiled / f"http1{suffix}").unlink()
    state = _interpreted(tmp_path, root, compiled)
    assert f"http1{suffix} is missing" in state


def test_an_unreadable_stamp_runs_interpreted(tmp_path: Path) -> None:
    root, compiled = _build(tmp_path)
    (compiled / "stamp.json").write_text("{not json")
    assert "unreadable" in _interpreted(tmp_path, root, compiled)


def test_the_digest_covers_names_and_contents(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("1")
    first = native.source_digest(tmp_path)
    (tmp_path / "a.py").rename(tmp_path / "b.py")
    assert native.source_digest(tmp_path) != first
    (tmp_path / "b.py").rename(tmp_path / "a.py")
    assert native.source_digest(tmp_path) == first
    (tmp_path / "notes.txt").write_text("not a source")
    assert native.source_digest(tmp_path) == first


def test_this_process_runs_what_the_state_says() -> None:
    # make test says which it means to test (compiled first, then PLAIT_PURE=1)
    expected = os.environ.get("PLAIT_EXPECT_REQUEST_PATH")
    if expected:
        assert native.STATE.startswith(expected), native.STATE
    compiled = native.STATE.startswith("compiled")
    assert (http1.__file__ or "").endswith(".so") == compiled
    assert (str(native.COMPILED_DIR) in plait.proxy.__path__) == compiled


def test_a_process_with_plait_pure_loads_the_sources() -> None:
    code = (
        "import plait.proxy.http1 as m, plait.proxy.native as n; print(n.STATE); print(m.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PLAIT_PURE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert out == ["interpreted: PLAIT_PURE is set", str(Path(native.__file__).parent / "http1.py")]


def _suspensions_in_handlers(source: str) -> list[tuple[int, str]]:
    """(line, kind) of every await, yield, ``async for`` or ``async with`` inside an
    ``except`` or ``finally`` clause of ``source``."""
    tree = ast.parse(source)
    clauses: list[ast.AST] = [
        h for n in ast.walk(tree) if isinstance(n, ast.Try) for h in n.handlers
    ]
    clauses += [s for n in ast.walk(tree) if isinstance(n, ast.Try) for s in n.finalbody]
    suspending = (ast.Await, ast.Yield, ast.YieldFrom, ast.AsyncFor, ast.AsyncWith)
    return sorted(
        {
            (n.lineno, type(n).__name__)
            for c in clauses
            for n in ast.walk(c)
            if isinstance(n, suspending)
        }
    )


def test_the_check_finds_suspensions_in_handlers() -> None:
    source = (
        "async def f(x):\n"
        "    try:\n"
        "        await x\n"  # in the try body: fine
        "    except OSError:\n"
        "        await x\n"
        "    finally:\n"
        "        async with x:\n"
        "            pass\n"
    )
    assert _suspensions_in_handlers(source) == [(5, "Await"), (7, "AsyncWith")]


def test_compiled_modules_do_not_suspend_in_except_or_finally_clauses() -> None:
    """mypyc keeps the exception being handled outside the coroutine, so a coroutine
    suspended in an ``except`` or ``finally`` clause loses it to another one: compiled,
    handshake() awaiting in an except clause leaked an SSLSocket per handshake when
    handshakes overlapped (test_tls_transport), and an await in a finally clause
    swallows the exception being raised (mypyc/mypyc#1114)."""
    package = Path(native.__file__).parent
    found = {
        name: hits
        for name in native.MODULES
        if (hits := _suspensions_in_handlers((package / f"{name}.py").read_text()))
    }
    assert found == {}
