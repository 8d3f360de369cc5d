# ruff: noqa: S603 - pip and the venv's python run with fixed argv lists, never a shell
"""The suites' sources and the venv they run in, kept in `.cache/compat/` (git-ignored).

- `sdist/`: each suite's source distribution, fetched once with `pip download --no-binary :all:`;
- `src/<name>-<version>/`: that sdist, extracted (the tests are run from there);
- `venv/`: a virtualenv of its own, so that pgwarden's `.venv` never sees the drivers or their
  test requirements: pytest, pytest-timeout, each suite's test requirements, and the drivers from
  wheels (`--only-binary :all:`), except psycopg2, built from its sdist (PyPI has no Linux wheel
  of it; the build needs a C compiler, Python's headers and libpq's, `pg_config`), or
  psycopg2-binary of the same version when that build fails.

A stamp file in the venv records what was installed; a second run with the same pins installs
nothing. Every pip call is bounded in time.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from compat.suites import RUNNER_REQUIREMENTS, SUITES, Suite

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "compat"
PIP_TIMEOUT = 900.0  # seconds for one pip call (a psycopg2 build takes about a minute)
VENV_TIMEOUT = 120.0
STAMP = ".compat-installed.json"


class ToolchainError(RuntimeError):
    """A suite's sources or the compat venv could not be had."""


@dataclass(frozen=True)
class Toolchain:
    """The venv the suites run in, and where each suite's sources are."""

    venv: Path
    sources: dict[str, Path]  # suite name -> extracted sdist
    drivers: dict[str, str]  # suite name -> the requirement its driver was installed from

    @property
    def pytest(self) -> Path:
        return self.venv / "bin" / "pytest"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def prepare(cache: Path = CACHE) -> Toolchain:
    """Everything every suite needs, fetched and installed when missing (one venv for all: a
    run of one suite and a run of all of them use the same installation)."""
    sources = {suite.name: extracted_sdist(suite, cache) for suite in SUITES}
    venv = cache / "venv"
    drivers = installed_venv(venv, SUITES, sources)
    return Toolchain(venv, sources, drivers)


def extracted_sdist(suite: Suite, cache: Path) -> Path:
    """The suite's sdist, downloaded and extracted once."""
    target = cache / "src" / f"{suite.name}-{suite.version}"
    if target.is_dir():
        return target
    archive = downloaded_sdist(suite, cache / "sdist")
    (cache / "src").mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(archive) as tar:
        tar.extractall(partial, filter="data")  # no links out of the folder, no devices
    top = partial / target.name
    if not top.is_dir():
        raise ToolchainError(f"{archive.name} does not hold {target.name}/")
    top.rename(target)
    partial.rmdir()
    return target


def downloaded_sdist(suite: Suite, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / f"{suite.name}-{suite.version}.tar.gz"
    if archive.is_file():
        return archive
    print(f"compat: downloading the {suite.label} sdist", flush=True)
    pip(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
         "--dest", str(directory), suite.sdist_requirement],
        f"download the {suite.label} sdist",
    )  # fmt: skip
    if not archive.is_file():
        raise ToolchainError(f"pip downloaded no {archive.name} into {directory}")
    return archive


def installed_venv(venv: Path, suites: Sequence[Suite], sources: dict[str, Path]) -> dict[str, str]:
    """The compat venv with what `suites` need; returns how each driver was installed."""
    wanted = wanted_packages(suites)
    stamp = venv / STAMP
    pins = fingerprint([*wanted, *(repr((s.driver, s.built_driver)) for s in suites)])
    recorded = read_stamp(stamp)
    known = recorded.get("drivers")
    if (
        recorded.get("pins") == pins
        and isinstance(known, dict)
        and all(isinstance(known.get(suite.name), str) for suite in suites)
    ):
        return {str(name): str(how) for name, how in known.items()}
    if not (venv / "bin" / "python").is_file():
        print(f"compat: creating the suites' venv in {venv}", flush=True)
        run([sys.executable, "-m", "venv", str(venv)], "create the compat venv", VENV_TIMEOUT)
    python = str(venv / "bin" / "python")
    print("compat: installing the suites' test requirements and drivers (once)", flush=True)
    pip([python, "-m", "pip", "install", "--quiet", *wanted], "install the test requirements")
    drivers: dict[str, str] = {}  # suite name -> the requirement its driver came from
    for suite in suites:
        if suite.driver:
            pip(
                [python, "-m", "pip", "install", "--quiet", "--only-binary", ":all:",
                 *suite.driver],
                f"install {suite.label} from a wheel",
            )  # fmt: skip
            drivers[suite.name] = f"{', '.join(suite.driver)} (wheel)"
        if suite.built_driver is not None:
            drivers[suite.name] = built_or_binary(python, suite, sources[suite.name])
    stamp.write_text(json.dumps({"pins": pins, "drivers": drivers}))
    return drivers


def built_or_binary(python: str, suite: Suite, source: Path) -> str:
    """psycopg2 built from its sdist; psycopg2-binary of the same version if the build fails."""
    assert suite.built_driver is not None
    try:
        pip(
            [python, "-m", "pip", "install", "--quiet", str(source)],
            f"build {suite.built_driver} from its sdist",
        )
    except ToolchainError as exc:
        if suite.binary_fallback is None:
            raise
        print(f"compat: {exc}\ncompat: using {suite.binary_fallback} instead", flush=True)
        pip(
            [python, "-m", "pip", "install", "--quiet", "--only-binary", ":all:",
             suite.binary_fallback],
            f"install {suite.binary_fallback}",
        )  # fmt: skip
        return f"{suite.binary_fallback} (wheel: building {suite.built_driver} failed)"
    return f"{suite.built_driver} (built from its sdist)"


def wanted_packages(suites: Sequence[Suite]) -> list[str]:
    wanted = list(RUNNER_REQUIREMENTS)
    for suite in suites:
        wanted.extend(r for r in suite.test_requirements if r not in wanted)
    return wanted


def fingerprint(wanted: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(wanted)).encode()).hexdigest()


def read_stamp(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pip(argv: list[str], what: str) -> None:
    run(argv, what, PIP_TIMEOUT)


def run(argv: list[str], what: str, timeout: float) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ToolchainError(f"could not {what}: no answer in {timeout:.0f} s") from exc
    if result.returncode != 0:
        output = (result.stderr or result.stdout)[-3000:]
        raise ToolchainError(f"could not {what} (exit {result.returncode}):\n{output}")
