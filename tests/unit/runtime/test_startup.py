"""A start that fails after the files are open: the one case the startup checks cannot rule out,
a listen port taken by another process between the check and the bind.

`serve()` then names the address (a StartupError, exit 2 in `pgwarden serve`) and closes what it
opened. The audit log keeps what it wrote, which says a server opened it, made its state store
and closed it again with no session in between; so the state file stays too, and the next start
finds the two together (a missing state file beside an audit log means a lost one).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.runtime import startup
from proxy.runtime.serve import serve
from proxy.runtime.startup import StartupError
from tests.fixtures.layout import GOOD_KEY, KEY_ENV, Layout
from tests.unit.audit.helpers import records


def test_a_port_taken_after_the_check_is_named_and_the_new_state_file_kept_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, GOOD_KEY)
    # Another process takes the port after the check found it free.
    monkeypatch.setattr(startup, "listen_problem", lambda addresses: None)
    layout = Layout.make(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        layout.write_config(api=f"127.0.0.1:{port}")
        with pytest.raises(StartupError) as refused:
            asyncio.run(serve(load_config(layout.config), layout.config))
    assert refused.value.problems == (
        f"api.listen: 127.0.0.1:{port} is already in use by another process; "
        "stop it or choose another port",
    )
    assert layout.state.exists()
    kinds = [r["kind"] for r in records(layout.audit_log)]
    assert kinds == ["audit.opened", "state.created", "audit.closed"]
