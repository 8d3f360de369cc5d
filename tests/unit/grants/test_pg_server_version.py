"""The PostgreSQL state store refuses a server too old for it, saying which it found."""

from __future__ import annotations

import pytest

from proxy.grants.pg_store import check_server_version
from proxy.grants.store_watch import StoreError

WHERE = "postgresql://db:5432/pgwarden (schema pgwarden)"


@pytest.mark.parametrize(
    ("version", "shown"), [(130016, "13.16"), (120020, "12.20"), (90624, "90624")]
)
def test_a_server_older_than_14_is_refused(version: int, shown: str) -> None:
    with pytest.raises(StoreError, match=rf"runs PostgreSQL {shown}; pgwarden needs 14 or newer"):
        check_server_version(version, WHERE)


@pytest.mark.parametrize("version", [140000, 160004, 180001])
def test_14_and_newer_are_taken(version: int) -> None:
    check_server_version(version, WHERE)
