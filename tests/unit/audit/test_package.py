"""The audit package stays synchronous and free of network code, even transitively: the event
loop side awaits its `concurrent.futures.Future`s, it never imports asyncio itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_importing_the_audit_package_pulls_in_no_asyncio_socket_or_ssl() -> None:
    code = (
        "import sys, proxy.audit, proxy.commands.audit_verify\n"
        "print(sorted(m for m in ('asyncio', 'socket', 'ssl', 'selectors') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
