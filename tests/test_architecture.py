"""The architecture, enforced: what may import what, who reads the clock, how big a module gets.

- `proxy/wire` and `proxy/auth` are sans-I/O: no asyncio, sockets, TLS or event loops.
- Only `proxy/session` (the network layer), `proxy/api` (the HTTP side) and `proxy/demo` (which
  starts a throwaway Postgres) open sockets or TLS.
- Only `proxy/clock.py` reads the time, so that every test of time can use a fake clock.
- Every module opens with a docstring and stays under the size where it stops being readable.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "proxy"
SANS_IO = ("wire", "auth")
IO_MODULES = frozenset({"asyncio", "socket", "ssl", "selectors", "uvloop", "select"})
# The demo starts a throwaway Postgres on a free loopback port; nothing else opens sockets.
NETWORK_PACKAGES = ("session", "api", "demo")
MAX_MODULE_LINES = 500
TIME_READERS = {("time", "time"), ("time", "monotonic"), ("time", "perf_counter"),
                ("datetime", "now"), ("datetime", "utcnow"), ("date", "today"),
                ("time", "time_ns"), ("time", "monotonic_ns")}  # fmt: skip


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def in_package(path: Path, *names: str) -> bool:
    parts = path.relative_to(PACKAGE).parts
    return len(parts) > 1 and parts[0] in names


@pytest.mark.parametrize("path", [p for p in modules() if in_package(p, *SANS_IO)], ids=relative)
def test_sans_io_packages_import_no_io(path: Path) -> None:
    assert imported_roots(parse(path)) & IO_MODULES == set()


@pytest.mark.parametrize(
    "path", [p for p in modules() if not in_package(p, *NETWORK_PACKAGES)], ids=relative
)
def test_only_the_network_layer_opens_sockets(path: Path) -> None:
    assert imported_roots(parse(path)) & {"socket", "ssl", "selectors", "select"} == set()


@pytest.mark.parametrize(
    "path", [p for p in modules() if relative(p) != "proxy/clock.py"], ids=relative
)
def test_only_the_clock_module_reads_the_time(path: Path) -> None:
    calls = {
        (node.func.value.id, node.func.attr)
        for node in ast.walk(parse(path))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
    }
    assert calls & TIME_READERS == set()


@pytest.mark.parametrize("path", modules(), ids=relative)
def test_every_module_says_its_job_and_stays_small(path: Path) -> None:
    tree = parse(path)
    assert ast.get_docstring(tree), f"{relative(path)} has no module docstring"
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_MODULE_LINES


def test_the_rules_see_a_violation() -> None:
    tree = ast.parse("import asyncio\nfrom socket import socket\nimport ssl as tls\n")
    assert imported_roots(tree) == {"asyncio", "socket", "ssl"}
