"""`api.public_proxy_address`: the address handed out with credentials, checked at startup."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError, ListenAddress, parse_config

BASE = """\
paths: {policy: p.yaml, state: s.db, audit_log: a.jsonl}
audit: {hmac_key_env: KEY}
"""


def test_the_public_proxy_address_is_optional_and_parsed() -> None:
    assert parse_config(BASE).api.public_proxy_address is None
    config = parse_config(
        BASE + "api: {listen: 0.0.0.0:8080, public_proxy_address: pg.example:5433}\n"
    )
    assert config.api.public_proxy_address == ListenAddress("pg.example", 5433)
    assert config.api.listen == ListenAddress("0.0.0.0", 8080)


@pytest.mark.parametrize(
    ("value", "wanted"),
    [
        ("0.0.0.0:6432", "not an address a client can connect to"),
        ("'[::]:6432'", "not an address a client can connect to"),
        ("pg.example:0", "not an address a client can connect to"),
        ("pg.example", "needs host:port"),
        ("5", "must be text"),
    ],
)
def test_a_public_address_no_client_could_dial_is_refused(value: str, wanted: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + f"api: {{public_proxy_address: {value}}}\n")
    assert any(
        "api.public_proxy_address" in str(p) and wanted in str(p) for p in caught.value.problems
    ), caught.value.problems
