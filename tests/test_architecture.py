"""The architecture, enforced: what may import what, who reads the clock, how big a module gets.

- Each package of `proxy/` may import only the packages `MAY_IMPORT` names for it, and no two
  packages import each other, however indirectly (no cycles).
- `proxy/wire` and `proxy/auth` are sans-I/O: no asyncio, sockets, TLS or event loops.
- Only the packages that talk over a network (`NETWORK_PACKAGES`) open sockets or TLS.
- Only `proxy/clock.py` reads the time, so that every test of time can use a fake clock.
- Message type bytes are named in `proxy/wire` alone: no `b"Q"` or `ord("Q")` elsewhere.
- Only entry points and base types stand loose in `proxy/`; every module opens with a docstring
  and stays under the size where it stops being readable.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "proxy"
SANS_IO = ("wire", "auth")
IO_MODULES = frozenset({"asyncio", "socket", "ssl", "selectors", "uvloop", "select"})
NETWORK_PACKAGES = (
    "net", "upstream", "session", "workers", "api", "demo", "cluster", "identity", "web",
)  # fmt: skip
MAX_MODULE_LINES = 500
TIME_READERS = {("time", "time"), ("time", "monotonic"), ("time", "perf_counter"),
                ("datetime", "now"), ("datetime", "utcnow"), ("date", "today"),
                ("time", "time_ns"), ("time", "monotonic_ns")}  # fmt: skip

# The modules that stand loose in `proxy/`: entry points and the base types everyone shares.
# `native` picks compiled or pure-Python hot modules when the package is imported.
LOOSE = frozenset(
    {"__init__", "__main__", "cli", "config", "addresses", "errors", "clock", "native"}
)
BASE = frozenset(
    {"proxy", "errors", "clock", "native"}
)  # `proxy`: the package's __init__ (version)
# Which proxy packages (or loose modules) each one may import, besides itself. A package missing
# here may import nothing but BASE.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "wire": BASE,
    "auth": BASE,
    "policy": BASE,
    "addresses": BASE | {"policy"},
    "config": BASE | {"addresses", "identity", "policy", "wire"},
    "identity": BASE | {"grants", "policy"},  # single sign-on (the config reads its settings)
    "grants": BASE | {"auth", "policy"},
    "audit": BASE | {"config", "policy", "wire"},
    "net": BASE | {"auth", "policy", "wire"},
    "upstream": BASE | {"auth", "config", "net", "policy", "wire"},
    "session": BASE | {"auth", "config", "grants", "net", "policy", "upstream", "wire"},
    "workers": BASE | {"audit", "config", "grants", "session"},
    "api": BASE | {"addresses", "config", "grants", "identity", "policy", "session"},
    "web": BASE | {"api", "audit", "grants", "identity", "policy", "session"},
    "runtime": BASE
    | {"api", "audit", "auth", "config", "grants", "net", "policy", "session", "upstream", "wire"}
    | {"cluster", "identity", "notify", "web", "workers"},
    "cluster": BASE | {"addresses", "config", "grants", "policy", "session", "upstream", "wire"},
    "notify": BASE | {"api", "grants", "policy", "session"},
    "demo": BASE | {"grants", "notify", "policy"},  # its Slack printout: notify's own message
    "commands": BASE
    | {"addresses", "api", "audit", "config", "grants", "net", "policy", "runtime", "upstream"}
    | {"cluster"},
    "cli": BASE | {"commands", "demo"},
    "__main__": BASE | {"cli"},
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def owner(path: Path) -> str:
    """The package a module belongs to, or the loose module's own name."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def owner_of_module(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "proxy"


def imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def proxy_imports(tree: ast.AST) -> Iterator[str]:
    """Every `proxy...` module an import names (`from proxy import x` names `proxy.x`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "proxy")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "proxy":
                yield from (f"proxy.{a.name}" for a in node.names if a.name != "__version__")
                yield "proxy"
            elif node.module.startswith("proxy."):
                yield node.module


@functools.cache
def parse(path: Path) -> ast.Module:
    """Each module is parsed once per run: every rule below walks the same trees (read only)."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def in_package(path: Path, *names: str) -> bool:
    parts = path.relative_to(PACKAGE).parts
    return len(parts) > 1 and parts[0] in names


def dependencies() -> dict[str, set[str]]:
    """Package (or loose module) → the other packages it imports."""
    graph: dict[str, set[str]] = {}
    for path in modules():
        here = owner(path)
        edges = graph.setdefault(here, set())
        edges.update(owner_of_module(m) for m in proxy_imports(parse(path)))
        edges.discard(here)
    graph.pop("__init__", None)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in the graph as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if cycle := visit(nxt, [*path, node]):
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start, []):
            return cycle
    return None


@pytest.mark.parametrize("path", [p for p in modules() if in_package(p, *SANS_IO)], ids=relative)
def test_sans_io_packages_import_no_io(path: Path) -> None:
    assert imported_roots(parse(path)) & IO_MODULES == set()


@pytest.mark.parametrize(
    "path", [p for p in modules() if not in_package(p, *NETWORK_PACKAGES)], ids=relative
)
def test_only_the_network_layer_opens_sockets(path: Path) -> None:
    assert imported_roots(parse(path)) & {"socket", "ssl", "selectors", "select"} == set()


@pytest.mark.parametrize("path", modules(), ids=relative)
def test_each_package_imports_only_what_its_rule_allows(path: Path) -> None:
    here = owner(path)
    allowed = MAY_IMPORT.get(here, BASE) | {here}
    imported = {owner_of_module(m) for m in proxy_imports(parse(path))}
    assert imported - allowed == set(), f"{here} may not import {sorted(imported - allowed)}"


def test_no_package_imports_itself_through_another() -> None:
    assert find_cycle(dependencies()) is None


def test_only_entry_points_and_base_types_stand_loose() -> None:
    loose = {p.stem for p in PACKAGE.glob("*.py")}
    assert loose <= LOOSE


def test_every_package_has_a_rule() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages - MAY_IMPORT.keys() == set()


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


def message_type_literals(tree: ast.AST) -> list[str]:
    """`b"Q"`-style one-letter byte strings and `ord("Q")` calls: message types by their byte."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            if len(node.value) == 1 and node.value.isalpha():
                found.append(repr(node.value))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "ord"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append(f"ord({node.args[0].value!r})")
    return found


@pytest.mark.parametrize("path", [p for p in modules() if not in_package(p, "wire")], ids=relative)
def test_message_type_bytes_are_named_only_in_wire(path: Path) -> None:
    assert message_type_literals(parse(path)) == []


@pytest.mark.parametrize("path", modules(), ids=relative)
def test_every_module_says_its_job_and_stays_small(path: Path) -> None:
    tree = parse(path)
    assert ast.get_docstring(tree), f"{relative(path)} has no module docstring"
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_MODULE_LINES


def test_the_rules_see_a_violation() -> None:
    tree = ast.parse("import asyncio\nfrom socket import socket\nimport ssl as tls\n")
    assert imported_roots(tree) == {"asyncio", "socket", "ssl"}
    tree = ast.parse("from proxy import cli\nimport proxy.session.relay\nfrom proxy.api import x")
    assert {owner_of_module(m) for m in proxy_imports(tree)} == {"cli", "session", "api", "proxy"}
    assert message_type_literals(ast.parse('x = b"Q"\ny = ord("Z")\nz = b"\\x00"')) == [
        "b'Q'",
        "ord('Z')",
    ]


def test_the_cycle_finder_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
