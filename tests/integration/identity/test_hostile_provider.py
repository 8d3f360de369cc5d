"""Every bad ID token of issue 18, refused by the real pgwarden server (SECURITY.md row 46).

The provider is hostile (tests/fixtures/hostile_idp.py): its endpoints are well-formed, but its
token endpoint answers with a forged ID token. pgwarden is the real runtime (the object
`pgwarden serve` runs, tests/fixtures/pgwarden.py) with `identity.oidc` pointed at it, on SQLite
and on PostgreSQL. Each forgery goes the real way: a device flow started and polled over HTTP
(or a browser flow finished), pgwarden redeeming the grant at the provider and checking what
comes back. Each must end in a 401 that names the reason, a WARNING in the server's log, one
more `pgwarden_sign_in_failures_total{reason}`, an `identity.sign_in_refused` audit record, and
nothing created: no session, no change to `people`. A good token from the same provider signs in
(the control: the harness forges only what each case changes). Also: a burst of made-up key ids
costs at most one JWKS read a minute, and a provider that is down makes sign-ins 503 while the
sessions already made keep working until they expire.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from proxy.api.auth_routes import StartLimit
from proxy.identity.keys import MIN_REFETCH
from proxy.policy.models import UserName
from tests.fixtures.api import Reply
from tests.fixtures.clock import FakeClock
from tests.fixtures.hostile_idp import (
    CLIENT_ID,
    USER,
    Grant,
    HostileIdp,
    b64url,
    hostile_idp,
    new_rsa_key,
)
from tests.fixtures.idp import client_secret_file, oidc_section
from tests.fixtures.pg_state import PgState
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.state_backends import BOTH_STORES

pytestmark = [pytest.mark.integration, BOTH_STORES]

CALLBACK = "http://127.0.0.1:48123/callback"
EVIL_ISSUER = "http://127.0.0.1:9/realms/evil"
BURST = 20  # sign-ins with made-up key ids, all at once


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a sign-in creates: the people rows, and how many API sessions are stored."""

    people: tuple[Any, ...]
    sessions: int


@dataclass
class Sso:
    """The runtime with single sign-on against the hostile provider, and how to look at it."""

    warden: RunningPgwarden
    idp: HostileIdp
    clock: FakeClock
    state: PgState | None
    directory: Path

    def call(self, method: str, path: str, body: object = None, token: str | None = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.warden.runtime.api.port, timeout=30)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, None if body is None else json.dumps(body), headers)
            response = conn.getresponse()
            raw = response.read()
            is_json = "json" in (response.getheader("Content-Type") or "")
            return Reply(response.status, json.loads(raw) if is_json else raw.decode(), {})
        finally:
            conn.close()

    def start_device(self) -> str:
        started = self.call("POST", "/api/v1/auth/device", {})
        assert started.status == 200, started.body
        return str(started.body["flow_id"])

    def poll(self, flow_id: str) -> Reply:
        return self.call("POST", "/api/v1/auth/device/poll", {"flow_id": flow_id})

    def device(self) -> Reply:
        return self.poll(self.start_device())

    def start_browser(self) -> tuple[str, dict[str, str]]:
        """(flow id, the redirect's parameters) of a browser flow the person went through."""
        started = self.call("POST", "/api/v1/auth/browser", {"redirect_uri": CALLBACK})
        assert started.status == 200, started.body
        return started.body["flow_id"], self.idp.authorize(started.body["authorization_url"])

    def finish(self, flow_id: str, params: dict[str, str], **changes: str) -> Reply:
        body = {"flow_id": flow_id, "code": params["code"], "state": params["state"],
                "iss": params["iss"], **changes}  # fmt: skip
        return self.call("POST", "/api/v1/auth/browser/finish", body)

    def browser(self) -> Reply:
        return self.finish(*self.start_browser())

    def failures(self, reason: str) -> float:
        text = str(self.call("GET", "/metrics").body)
        line = re.search(rf'^pgwarden_sign_in_failures_total\{{reason="{reason}"\}} (\S+)$',
                         text, re.MULTILINE)  # fmt: skip
        assert line is not None, f"no sign-in failure series for {reason!r}"
        return float(line.group(1))

    def refusals(self) -> list[dict[str, Any]]:
        """The audit log's `identity.sign_in_refused` records, in order."""
        lines = self.warden.runtime.audit.path.read_text().splitlines()
        records = [json.loads(line) for line in lines]
        return [r for r in records if r["kind"] == "identity.sign_in_refused"]

    def snapshot(self) -> Snapshot:
        with self.warden.store.read() as tx:
            people = tx.people()
        if self.state is not None:
            ((sessions,),) = self.state.query("SELECT count(*) FROM api_sessions")
        else:
            with sqlite3.connect(self.directory / "state.db") as conn:
                (sessions,) = conn.execute("SELECT count(*) FROM api_sessions").fetchone()
        return Snapshot(people, int(sessions))


@contextmanager
def sso_server(
    deployment: PgwardenDeployment, idp: HostileIdp, directory: Path, state: PgState | None
) -> Iterator[Sso]:
    """The test deployment's pgwarden with `identity.oidc` against `idp`, on a fake clock at
    real now (the provider's tokens are stamped with real time)."""
    config = deployment.write_files(directory, state=state)
    secret_file = client_secret_file(directory, idp.client_secret)
    section = oidc_section(idp.issuer, CLIENT_ID, secret_file, allowed_domains="[corp.test]")
    config.write_text(config.read_text() + section)
    clock = FakeClock(datetime.now(UTC))
    with running_pgwarden(config, clock) as warden:
        yield Sso(warden, idp, clock, state, directory)


@pytest.fixture(autouse=True)
def unlimited_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests begin sign-ins by the dozen from one address, on one server: the per-address
    limit (test_sign_in_limits.py) is not what they are about."""
    monkeypatch.setattr(StartLimit, "BURST", 1_000_000)


@pytest.fixture(scope="module")
def module_idp() -> Iterator[HostileIdp]:
    with hostile_idp() as idp:
        yield idp


@pytest.fixture(scope="module")
def module_sso(
    deployment: PgwardenDeployment, module_idp: HostileIdp, state_store: PgState | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Sso]:  # fmt: skip
    with sso_server(deployment, module_idp, tmp_path_factory.mktemp("hostile"), state_store) as sso:
        yield sso


@pytest.fixture
def sso(module_sso: Sso, caplog: pytest.LogCaptureFixture) -> Sso:
    """The module's server, its provider honest again and its clock at real now."""
    module_sso.idp.forge = None
    module_sso.clock.set(datetime.now(UTC))
    caplog.set_level(logging.WARNING, logger="proxy.identity")
    return module_sso


@pytest.fixture
def own_sso(
    deployment: PgwardenDeployment, fresh_state_store: PgState | None, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[Sso]:  # fmt: skip
    """A server and a provider of this test's own: their key cache, port and clock are its."""
    caplog.set_level(logging.WARNING, logger="proxy.identity")
    with hostile_idp() as idp, sso_server(deployment, idp, tmp_path, fresh_state_store) as sso:
        yield sso


# --- the forgeries ----------------------------------------------------------------------------

Forgery = Callable[[HostileIdp, Grant], str]


def at(minutes: int) -> Callable[[], int]:
    """A NumericDate `minutes` from the moment of forging (real time, the provider's): read
    then, not when the table is built, since a long run may come to this module late."""
    return lambda: int((datetime.now(UTC) + timedelta(minutes=minutes)).timestamp())


def claims_say(**changes: Any) -> Forgery:
    """Signed properly with the published key; only the claims lie (`at` values: times)."""

    def forge(idp: HostileIdp, grant: Grant) -> str:
        now = {name: value() if callable(value) else value for name, value in changes.items()}
        return idp.sign(idp.claims(grant, **now))

    return forge


def tampered(idp: HostileIdp, grant: Grant) -> str:
    """A good token whose claims were changed after signing (alice made a lead)."""
    head, _, signature = idp.sign(idp.claims(grant)).split(".")
    claims = json.dumps(idp.claims(grant, groups=["leads"])).encode()
    return f"{head}.{b64url(claims)}.{signature}"


@dataclass(frozen=True, slots=True)
class Bad:
    forge: Forgery
    reason: str  # the metric's label, in the log and the audit record too
    says: str  # in the 401's message


BAD_TOKENS = {
    "wrong issuer": Bad(claims_say(iss=EVIL_ISSUER), "issuer", f"issued by {EVIL_ISSUER!r}"),
    "wrong audience": Bad(claims_say(aud="other-app"), "audience", "for another application"),
    "several audiences, no azp": Bad(claims_say(aud=["other-app", CLIENT_ID]), "audience",
                                     "several audiences"),
    "expired": Bad(claims_say(iat=at(-20), exp=at(-10)), "expired", "expired at"),
    "nbf in the future": Bad(claims_say(nbf=at(10)), "not_yet_valid", "not valid yet (nbf)"),
    "iat in the future": Bad(claims_say(iat=at(10), exp=at(15)), "not_yet_valid",
                             "issued in the future"),
    "signed with a key not published": Bad(lambda idp, grant: idp.sign(idp.claims(grant),
                                           key=new_rsa_key()), "bad_signature",
                                           "signature is not valid"),
    "claims changed after signing": Bad(tampered, "bad_signature", "signature is not valid"),
    "alg none": Bad(lambda idp, grant: idp.unsigned(idp.claims(grant)), "algorithm",
                    "signed with 'none' are not accepted (allowed: RS256)"),
    "HS256 keyed with the public key": Bad(
        lambda idp, grant: idp.hmac_with_public_key(idp.claims(grant)), "algorithm",
        "signed with 'HS256' are not accepted (allowed: RS256)"),
    # A symmetric key in a JWKS is public: pgwarden never takes one as a verification key.
    "RS256 header, HMAC with a key from the JWKS": Bad(
        lambda idp, grant: idp.hmac_with_published_secret(idp.claims(grant)), "unknown_key",
        "key the identity provider does not publish"),
    "unknown kid": Bad(lambda idp, grant: idp.sign(idp.claims(grant), kid="made-up"),
                       "unknown_key", "key the identity provider does not publish"),
    "groups missing": Bad(claims_say(groups=None), "groups", "sent no 'groups' claim"),
    "groups a string": Bad(claims_say(groups="leads"), "groups", "not a list of group names"),
    "groups with a non-string": Bad(claims_say(groups=["engineers", 7]), "groups",
                                    "not a list of group names"),
    "email outside allowed_domains": Bad(claims_say(email="alice@elsewhere.test"), "domain",
                                         "not in a domain allowed"),
    "email not verified": Bad(claims_say(email_verified=False), "domain",
                              "not in a domain allowed"),
}  # fmt: skip

BAD_BROWSER_TOKENS = {
    "another nonce": Bad(claims_say(nonce="not-this-flows-nonce"), "nonce",
                         "nonce does not match"),
    "no nonce": Bad(claims_say(nonce=None), "nonce", "nonce does not match"),
}  # fmt: skip


def assert_refused(
    sso: Sso, caplog: pytest.LogCaptureFixture, attempt: Callable[[], Reply], *, method: str,
    reason: str, says: str,
) -> Reply:  # fmt: skip
    """`attempt` gets a 401 saying `says`, logged, counted and audited as `reason`; and
    creates nothing."""
    before, counted, audited = sso.snapshot(), sso.failures(reason), len(sso.refusals())
    caplog.clear()
    refused = attempt()
    assert (refused.status, refused.code) == (401, "sign_in_refused"), refused.body
    assert says in refused.message, refused.message
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"sign-in refused ({method}, {reason})" in w for w in warnings), warnings
    assert sso.failures(reason) == counted + 1
    records = sso.refusals()[audited:]
    assert [(r["method"], r["reason"]) for r in records] == [(method, reason)], records
    assert records[0]["issuer"] == sso.idp.issuer
    assert sso.snapshot() == before
    return refused


# --- the tests ------------------------------------------------------------------------------


def test_a_good_token_from_the_same_provider_signs_in(sso: Sso) -> None:
    before = sso.snapshot()
    for signed in (sso.device(), sso.browser()):
        assert signed.status == 200, signed.body
        assert (signed.body["user"], signed.body["groups"]) == (USER, ["engineers"])
        status = sso.call("GET", "/api/v1/status", token=signed.body["session_token"])
        assert status.status == 200, status.body
    assert [g.kind for g in sso.idp.redeemed[-2:]] == ["device", "browser"]
    after = sso.snapshot()
    assert after.sessions == before.sessions + 2
    (alice,) = [p for p in after.people if p.user == UserName(USER)]
    assert (alice.subject, alice.issuer, alice.email) == (sso.idp.subject, sso.idp.issuer,
                                                          "alice@corp.test")  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_TOKENS), ids=list(BAD_TOKENS))
def test_a_forged_id_token_is_refused_and_creates_nothing(
    sso: Sso, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    bad = BAD_TOKENS[case]
    sso.idp.forge = lambda grant: bad.forge(sso.idp, grant)
    redeemed = len(sso.idp.redeemed)
    assert_refused(sso, caplog, sso.device, method="device", reason=bad.reason, says=bad.says)
    assert len(sso.idp.redeemed) == redeemed + 1  # the forgery was really fetched and read


@pytest.mark.parametrize("case", list(BAD_BROWSER_TOKENS), ids=list(BAD_BROWSER_TOKENS))
def test_a_token_for_another_browser_sign_in_is_refused(
    sso: Sso, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    bad = BAD_BROWSER_TOKENS[case]
    sso.idp.forge = lambda grant: bad.forge(sso.idp, grant)
    assert_refused(sso, caplog, sso.browser, method="browser", reason=bad.reason,
                   says=bad.says)  # fmt: skip


def test_a_refused_flow_cannot_be_polled_again(sso: Sso, caplog: pytest.LogCaptureFixture) -> None:
    unsigned = BAD_TOKENS["alg none"].forge
    sso.idp.forge = lambda grant: unsigned(sso.idp, grant)
    flow_id = sso.start_device()
    assert sso.poll(flow_id).status == 401
    sso.idp.forge = None  # an honest answer now would not matter: the flow is spent
    again = assert_refused(sso, caplog, lambda: sso.poll(flow_id), method="device",
                           reason="flow", says="already completed")  # fmt: skip
    assert "pgwarden login" in again.message


def test_a_mismatched_or_replayed_state_is_refused(
    sso: Sso, caplog: pytest.LogCaptureFixture
) -> None:
    flow_id, params = sso.start_browser()
    redeemed = len(sso.idp.redeemed)
    assert_refused(sso, caplog, lambda: sso.finish(flow_id, params, state="not-the-state"),
                   method="browser", reason="state", says="state does not match")  # fmt: skip
    assert len(sso.idp.redeemed) == redeemed  # refused before the code was redeemed
    # The right state, too late: the mismatch burned the flow.
    assert_refused(sso, caplog, lambda: sso.finish(flow_id, params), method="browser",
                   reason="flow", says="already completed")  # fmt: skip
    flow_id, params = sso.start_browser()
    assert sso.finish(flow_id, params).status == 200
    assert_refused(sso, caplog, lambda: sso.finish(flow_id, params), method="browser",
                   reason="flow", says="already completed")  # fmt: skip


def test_a_code_issued_to_another_flow_fails_its_pkce_verifier(
    sso: Sso, caplog: pytest.LogCaptureFixture
) -> None:
    first, first_params = sso.start_browser()
    _, second_params = sso.start_browser()
    stolen = {**second_params, "state": first_params["state"]}  # first's state, second's code
    redeemed = len(sso.idp.redeemed)
    assert_refused(sso, caplog, lambda: sso.finish(first, stolen), method="browser",
                   reason="denied", says="invalid_grant")  # fmt: skip
    assert len(sso.idp.redeemed) == redeemed  # the provider found the verifier wrong


def test_a_burst_of_unknown_key_ids_costs_one_jwks_read_a_minute(own_sso: Sso) -> None:
    sso = own_sso
    assert sso.device().status == 200
    assert sso.idp.jwks_reads == 1
    counted = sso.failures("unknown_key")
    sso.idp.forge = lambda grant: sso.idp.sign(sso.idp.claims(grant),
                                               kid=f"forged-{secrets.token_hex(4)}")  # fmt: skip
    before = sso.snapshot()

    def burst() -> list[Reply]:
        flows = [sso.start_device() for _ in range(BURST)]
        with ThreadPoolExecutor(BURST) as pool:
            return list(pool.map(sso.poll, flows))

    refused = burst()  # within the minute of the first read: no read at all
    assert {(r.status, r.code) for r in refused} == {(401, "sign_in_refused")}
    assert sso.idp.jwks_reads == 1
    sso.clock.advance(MIN_REFETCH)
    refused = burst()  # a read is allowed again: one, for the whole burst
    assert {(r.status, r.code) for r in refused} == {(401, "sign_in_refused")}
    assert sso.idp.jwks_reads == 2
    assert sso.failures("unknown_key") == counted + 2 * BURST
    assert sso.snapshot() == before
    # A real rotation: refused until the next read is allowed, then it signs in.
    sso.idp.rotate("hostile-2")
    rotated = sso.device()
    assert (rotated.status, sso.idp.jwks_reads) == (401, 2), rotated.body
    sso.clock.advance(MIN_REFETCH)
    signed = sso.device()
    assert (signed.status, sso.idp.jwks_reads) == (200, 3), signed.body


def test_a_provider_that_is_down_refuses_sign_ins_and_keeps_sessions(
    own_sso: Sso, caplog: pytest.LogCaptureFixture
) -> None:
    sso = own_sso
    signed = sso.device()
    assert signed.status == 200, signed.body
    token = signed.body["session_token"]
    waiting = sso.start_device()  # started before the outage, polled during it
    browsing = sso.start_browser()  # the person came back from the provider: it goes down
    before, counted = sso.snapshot(), sso.failures("idp_unavailable")
    sso.idp.stop()
    caplog.clear()
    attempts: list[Callable[[], Reply]] = [
        lambda: sso.call("POST", "/api/v1/auth/device", {}),
        lambda: sso.poll(waiting),
        lambda: sso.finish(*browsing),
    ]
    for attempt in attempts:
        down = attempt()
        assert (down.status, down.code) == (503, "idp_unavailable"), down.body
        assert "cannot reach the identity provider" in down.message
        assert down.message.endswith("try again shortly")
    assert sso.failures("idp_unavailable") == counted + 3
    assert [r["reason"] for r in sso.refusals()[-3:]] == ["idp_unavailable"] * 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("sign-in refused" in w and "idp_unavailable" in w for w in warnings) == 3
    assert sso.snapshot() == before
    assert sso.call("GET", "/api/v1/status", token=token).status == 200  # sessions keep working
    sso.idp.start()  # back on the same port: the flow it interrupted can finish
    assert sso.poll(waiting).status == 200
    sso.idp.stop()
    sso.clock.advance(timedelta(hours=1, minutes=1))  # past the session's 1 h
    expired = sso.call("GET", "/api/v1/status", token=token)
    assert expired.status == 401
    assert "expired at" in expired.message
