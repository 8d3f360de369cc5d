"""Why a login failed, as the log and the observers (metrics, audit) see it: read from the typed
reason the SCRAM exchange gives, never from its text. The client sees one 28P01 whatever it is."""

from __future__ import annotations

import pytest

from proxy.auth import CredentialRejection, InvalidPasswordError, ScramProtocolError
from proxy.errors import PgwardenError
from proxy.session.observer import LoginFailure
from proxy.session.throttling import exchange_failure
from proxy.wire import RemoteProtocolError


@pytest.mark.parametrize(
    ("rejection", "expected"),
    [
        (CredentialRejection.WRONG_PROOF, LoginFailure.WRONG_PASSWORD),
        (CredentialRejection.NO_CREDENTIAL, LoginFailure.WRONG_PASSWORD),
        (CredentialRejection.GRANT_ENDED, LoginFailure.GRANT_ENDED),
    ],
)
def test_a_refused_credential_is_counted_by_its_typed_reason(
    rejection: CredentialRejection, expected: LoginFailure
) -> None:
    assert exchange_failure(InvalidPasswordError("alice", rejection)) == (
        expected,
        rejection.value,
    )


@pytest.mark.parametrize(
    "exc", [ScramProtocolError("malformed SCRAM message"), RemoteProtocolError("bad length")]
)
def test_a_broken_exchange_is_a_protocol_failure(exc: PgwardenError) -> None:
    assert exchange_failure(exc) == (LoginFailure.PROTOCOL, exc.message)
