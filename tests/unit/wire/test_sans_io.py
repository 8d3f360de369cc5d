"""The codec is sans-I/O: no module of proxy/wire may import networking or an event loop."""

from __future__ import annotations

import ast
from pathlib import Path

import proxy.wire

FORBIDDEN = {"asyncio", "socket", "ssl", "selectors", "uvloop"}
WIRE = Path(proxy.wire.__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {name.split(".")[0] for name in names}


def test_wire_imports_no_io_modules() -> None:
    modules = sorted(WIRE.glob("*.py"))
    assert len(modules) > 5
    for path in modules:
        assert imported_modules(path) & FORBIDDEN == set(), path.name


def test_wire_modules_stay_small() -> None:
    for path in WIRE.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name
