"""When the demo's OpenID provider fails to start, the one line `make demo` shows says how."""

import subprocess
from pathlib import Path

import pytest

from proxy.demo.local_idp import LocalProvider, ProviderFailed


def test_a_provider_that_exits_at_start_is_named_with_its_status_and_last_words(
    tmp_path: Path,
) -> None:
    provider = LocalProvider(tmp_path, tmp_path, [], [])
    provider.log.write_bytes(b"listening http://127.0.0.1:1 (an earlier start)\n")
    offset = provider.log.stat().st_size
    with provider.log.open("ab") as sink:
        script = "echo loading; echo 'Error: Cannot find module oidc-provider'; exit 3"
        provider.process = subprocess.Popen(
            ["/bin/sh", "-c", script], stdout=sink, stderr=subprocess.STDOUT
        )
    with pytest.raises(ProviderFailed) as failed:
        provider._wait_listening(offset)
    first = str(failed.value).splitlines()[0]
    assert first == (
        "the local OpenID provider did not start: it exited with status 3 "
        "(Error: Cannot find module oidc-provider)"
    )
    assert provider.process is None  # stopped: nothing left behind
