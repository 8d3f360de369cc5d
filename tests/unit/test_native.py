"""proxy/native.py: compiled hot modules are used only for the exact sources they were built from.

The judgement is tested on a package of our own in tmp_path (a stand-in shared library, sources,
a manifest); what the real package loads is tested in a fresh interpreter, both ways.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import native

LIBRARY_NAME = native.SHARED_LIBRARY + ".cpython-311-x86_64-linux-gnu.so"


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A package as a build leaves it: sources, the shared library, the manifest."""
    root = tmp_path / "proxy"
    (root / "audit").mkdir(parents=True)
    (root / "__init__.py").write_text('"""pkg."""\n')
    (root / "audit" / "recorder.py").write_text("N = 1\n")
    (root / LIBRARY_NAME).write_bytes(b"\x7fELF stand-in")
    native.write_manifest(root)
    return root


def test_a_tree_built_from_these_sources_runs_compiled(package: Path) -> None:
    assert native.judge(package, {}) == ("compiled", "")
    assert native.judge(package, {native.PURE_VARIABLE: "0"}) == ("compiled", "")


def test_no_shared_library_means_pure(package: Path) -> None:
    (package / LIBRARY_NAME).unlink()
    assert native.judge(package, {}) == ("pure", "not compiled (make compile)")


def test_the_environment_asks_for_pure_python(package: Path) -> None:
    assert native.judge(package, {native.PURE_VARIABLE: "1"}) == (
        "pure",
        "PGWARDEN_PURE is set",
    )


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda p: (p / "audit" / "recorder.py").write_text("N = 2\n"), "sources changed"),
        (lambda p: (p / "audit" / "new.py").write_text("M = 1\n"), "sources changed"),
        (lambda p: (p / "audit" / "recorder.py").unlink(), "sources changed"),
        (lambda p: (p / native.MANIFEST).unlink(), "no readable"),
        (lambda p: (p / native.MANIFEST).write_text("{not json"), "no readable"),
    ],
    ids=["edited", "added", "removed", "no-manifest", "bad-manifest"],
)
def test_a_tree_changed_since_the_build_runs_pure(package: Path, change: object, why: str) -> None:
    assert callable(change)
    change(package)
    mode, reason = native.judge(package, {})
    assert mode == "pure"
    assert why in reason
    assert "make compile" in reason


def test_a_build_of_other_modules_runs_pure(package: Path) -> None:
    manifest = json.loads((package / native.MANIFEST).read_text())
    manifest["modules"] = manifest["modules"][:-1]
    (package / native.MANIFEST).write_text(json.dumps(manifest))
    assert native.judge(package, {}) == (
        "pure",
        "other modules compiled than listed: make compile",
    )


def test_a_compiled_module_left_by_an_older_build_means_pure(package: Path) -> None:
    # Its shared library is gone: imported, it would fail (or run code of another tree).
    (package / "audit" / "gone.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF old")
    native.write_manifest(package)
    assert native.judge(package, {}) == (
        "pure",
        "proxy.audit.gone left by an older build: make compile",
    )


def _loaded_from(environ: dict[str, str]) -> dict[str, str]:
    """In a fresh interpreter: the mode, and the file each listed module was loaded from."""
    script = (
        "import importlib, json\n"
        "from proxy import native\n"
        "files = {m: importlib.import_module(m).__file__ for m in native.COMPILED_MODULES}\n"
        "print(json.dumps({'mode': native.mode, **files}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=environ, capture_output=True, text=True, check=True
    )
    loaded: dict[str, str] = json.loads(done.stdout)
    return loaded


def test_pgwarden_pure_loads_every_listed_module_from_its_source() -> None:
    loaded = _loaded_from({**os.environ, native.PURE_VARIABLE: "1"})
    assert loaded.pop("mode") == "pure"
    assert sorted(loaded) == sorted(native.COMPILED_MODULES)
    assert all(path.endswith(".py") for path in loaded.values()), loaded


def test_otherwise_all_listed_modules_are_compiled_or_none_is() -> None:
    environ = {k: v for k, v in os.environ.items() if k != native.PURE_VARIABLE}
    loaded = _loaded_from(environ)
    compiled = loaded.pop("mode") == "compiled"
    suffix = ".so" if compiled else ".py"
    assert all(path.endswith(suffix) for path in loaded.values()), loaded
    assert native.judge(native.PACKAGE, environ)[0] == ("compiled" if compiled else "pure")


def test_the_version_says_which_modules_run() -> None:
    environ = {**os.environ, native.PURE_VARIABLE: "1"}
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"],
        env=environ, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip().endswith(", pure Python (PGWARDEN_PURE is set)")
