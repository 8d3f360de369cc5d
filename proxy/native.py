"""The hot modules, compiled with mypyc where a build made them, pure Python otherwise.

pgwarden runs as plain Python. `make compile` (or a package build with PGWARDEN_COMPILE=1, see
`setup.py`) compiles the modules of `COMPILED_MODULES` — the path every relayed message, every
audited query and every login takes — into C extensions beside their sources (`make bench`
measures both: the README's Performance section). The same sources run either way: mypyc
compiles the typed code that `mypy --strict` already checks.

A compiled module sits next to its `.py` and Python would prefer it even after the source
changed. So the build writes a manifest of the digest of every `.py` under `proxy/`, and at
import `choose()` takes the compiled modules only if the tree is still the one that was compiled:
otherwise (an edit since, a half-copied tree, a module left by an older build) every module is
loaded from source, all or none (compiled modules call each other directly, so a mix would run
old code). The environment variable PGWARDEN_PURE=1 asks for the pure-Python modules (`make
test` runs the unit tests both ways).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

# Each chosen because `make bench` showed it paid: the relay and the audited query's path, then
# logins (the handshake, the upstream login) and redaction. Not here: `wire/backend` (its
# dataclasses' ClassVar message types fail to build), `auth/` (compiled, its refusals came out
# with SQLSTATE XX000: not looked into yet), `net/peer` (an asyncio.Protocol subclass),
# `session/opening` (the adversarial tests count upstream logins by wrapping its
# `connect_upstream`).
COMPILED_MODULES = (
    "proxy.clock",
    "proxy.wire.buffer",
    "proxy.wire.payload",
    "proxy.wire.framing",
    "proxy.session.relay",
    "proxy.session.session",
    "proxy.session.handshake",
    "proxy.upstream.startup_settings",
    "proxy.upstream.login",
    "proxy.upstream.connect",
    "proxy.audit.fast_decode",
    "proxy.audit.encode",
    "proxy.audit.known_secrets",
    "proxy.audit.redact",
    "proxy.audit.shaping",
    "proxy.audit.records",
    "proxy.audit.recorder",
    "proxy.audit.fsio",
    "proxy.audit.sink_state",
    "proxy.audit.log",
    "proxy.runtime.metrics_observer",
    "proxy.runtime.auditing",
)
MANIFEST = "_native.json"  # written by the build beside this file
SHARED_LIBRARY = "_native__mypyc"  # mypyc's library of the compiled group (its `group_name`)
PURE_VARIABLE = "PGWARDEN_PURE"
PACKAGE = Path(__file__).resolve().parent

# What this process runs: "compiled", or "pure" with the reason (shown by `pgwarden --version`
# and at start-up, and recorded by `make bench`).
mode = "pure"
reason = "not compiled (make compile)"


def source_digests(package: Path = PACKAGE) -> dict[str, str]:
    """sha256 of every `.py` under the package, by path relative to it."""
    return {
        path.relative_to(package).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(package.rglob("*.py"))
    }


def write_manifest(package: Path = PACKAGE) -> Path:
    """After a build: record the sources it compiled (and which modules)."""
    manifest = package / MANIFEST
    body = {"modules": list(COMPILED_MODULES), "sources": source_digests(package)}
    manifest.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    return manifest


def built(package: Path = PACKAGE) -> bool:
    """Whether compiled modules are present (current or not)."""
    return any(package.glob(SHARED_LIBRARY + "*"))


def judge(package: Path, environ: Mapping[str, str]) -> tuple[str, str]:
    """("compiled", "") if the compiled modules may be used, else ("pure", why not)."""
    if not built(package):
        return "pure", "not compiled (make compile)"
    if environ.get(PURE_VARIABLE, "") not in ("", "0"):
        return "pure", f"{PURE_VARIABLE} is set"
    problem = _build_problem(package)
    return ("pure", f"{problem}: make compile") if problem else ("compiled", "")


def _build_problem(package: Path) -> str | None:
    """Why the compiled modules beside these sources must not run, if they must not."""
    try:
        manifest = json.loads((package / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"no readable {MANIFEST}"
    if manifest.get("modules") != list(COMPILED_MODULES):
        return "other modules compiled than listed"
    if manifest.get("sources") != source_digests(package):
        return "sources changed since compiled"
    if stray := sorted(set(_extension_modules(package)) - set(COMPILED_MODULES)):
        return f"{stray[0]} left by an older build"
    return None


def _extension_modules(package: Path) -> list[str]:
    """The modules the package holds as extensions (but mypyc's shared library)."""
    names = []
    for path in package.rglob("*.so"):
        if not path.name.startswith(SHARED_LIBRARY):
            parts = path.relative_to(package.parent).with_name(path.name.split(".")[0]).parts
            names.append(".".join(parts))
    return names


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Loads the package's modules from their `.py`, ahead of any compiled extension (listed or
    left by an older build)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PACKAGE.name + ".") or not path:
            return None
        source = Path(path[0]) / (fullname.rpartition(".")[2] + ".py")
        if not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def choose(environ: Mapping[str, str] = os.environ) -> None:
    """Called once, when `proxy` is first imported, before any listed module is."""
    global mode, reason
    mode, reason = judge(PACKAGE, environ)
    if mode == "pure" and any(PACKAGE.rglob("*.so")):
        sys.meta_path.insert(0, _SourceFinder())


def describe() -> str:
    """`compiled (mypyc)` or `pure Python (<why>)`."""
    return "compiled (mypyc)" if mode == "compiled" else f"pure Python ({reason})"
