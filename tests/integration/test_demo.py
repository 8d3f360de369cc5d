"""`make demo` runs to completion unattended, as a newcomer's first command would."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_runs_the_whole_story_unattended() -> None:
    env = {**os.environ, "PGWARDEN_DEMO_NONINTERACTIVE": "1"}
    result = subprocess.run(
        ["make", "--no-print-directory", "demo"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "permission denied for table orders" in out
    assert 'pgwarden: access to "shop" (read-only) was revoked by carol: investigation done' in out
    assert "ok:" in out  # pgwarden audit verify
    assert "  $ pgwarden audit verify --config " in out  # runnable as printed: the key is a file
    assert "the head file audit.jsonl.head vouches for the records up to" in out  # explained
    assert "The demo ran to the end" in out
    assert re.search(r"^Stopped pgwarden \(pid \d+\) and PostgreSQL on .*; removed ", out, re.M)
    assert out.rstrip().splitlines()[-1].endswith(f'export PATH="{ROOT}/.venv/bin:$PATH"')
