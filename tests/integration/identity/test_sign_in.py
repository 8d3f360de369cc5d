"""Single sign-on through the real API server and the real OpenID provider (tests/fixtures/idp):
the device flow as alice and the PKCE flow as carol end to end, sessions used on the API,
refresh that follows the provider's groups (carol loses `leads`: she can no longer approve),
logout, and the bad inputs the provider can really produce: replayed and mismatched state, a
wrong PKCE verifier, expired and not-yet-valid tokens (pgwarden's clock moved), a groups claim
that is not a list, a domain not allowed, a rotated key (one refetch, rate-limited), a provider
that is down (new sign-ins 503, existing sessions keep working). Forged tokens (`alg: none`,
HS256, bad signatures, wrong audience) are tests/unit/identity/test_tokens.py's.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from proxy.audit import AuditLog
from proxy.audit.verify import verify
from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import IDENTITY_ACTOR, RequestId
from proxy.identity.flows import flow_digest
from proxy.identity.keys import MIN_REFETCH
from proxy.identity.people import EffectivePolicy
from proxy.identity.settings import OidcSettings
from proxy.identity.signin import SignInService
from proxy.policy.models import (
    AccessLevel,
    AccessLevelName,
    ApprovalRule,
    GroupName,
    Policy,
    SecretRef,
    Target,
    TargetName,
    Upstream,
    UserName,
)
from proxy.runtime.identity_audit import GONE, IdentityAuditor
from tests.fixtures.api import ApiHarness, Reply
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import PolicyBox
from tests.fixtures.idp import Idp, rsa_signing_key

CALLBACK = "http://127.0.0.1:48123/callback"
SECRET_ENV = "PGW_TEST_OIDC_SECRET"
RO = AccessLevelName("read-only")
AUDIT_KEY = b"k" * 32


def sso_policy() -> Policy:
    """orders/read-only needs one of `leads`; the YAML names nobody: alice and carol, and who
    is a lead, come from the provider."""
    leads = ApprovalRule(approver_groups=frozenset({GroupName("leads")}))
    level = AccessLevel(RO, "pgw_ro", SecretRef(env="PGW_UNUSED"), None, None)
    orders = Target(TargetName("orders"), Upstream("db.internal", 5432, "app"), {RO: level},
                    timedelta(hours=4), leads)  # fmt: skip
    return Policy(users={}, targets={orders.name: orders})


class Sso:
    """An API server with single sign-on against `idp`, its policy the effective one."""

    def __init__(self, api: ApiHarness, idp: Idp, settings: OidcSettings, base: PolicyBox,
                 audit_path: Path):  # fmt: skip
        self.api, self.idp = api, idp
        self.people = EffectivePolicy(base, api.store)
        self.audit_path = audit_path
        self.audit = AuditLog(audit_path, AUDIT_KEY, clock=api.clock)
        grants = GrantService(api.store, api.clock, self.people)
        self.service = SignInService(
            settings, api.store, api.clock, self.people, api.metrics,
            audit=IdentityAuditor(self.audit, wait_durable=False),
            on_removed=lambda user: grants.end_all_of(user, IDENTITY_ACTOR, GONE),
        )  # fmt: skip
        api.grants = grants
        api.context.grants, api.context.policy = api.grants, self.people
        api.context.identity = self.service

    def post(self, path: str, body: object = None, token: str | None = None) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return self.api.call("POST", f"/api/v1/auth{path}", body, headers=headers)

    def get(self, path: str, token: str) -> Reply:
        return self.api.call("GET", path, headers={"Authorization": f"Bearer {token}"})

    def device(self, user: str) -> Reply:
        started = self.post("/device")
        assert started.status == 200, started.body
        pending = self.post("/device/poll", {"flow_id": started.body["flow_id"]})
        assert (pending.status, pending.body["status"]) == (202, "pending")
        self.idp.approve_device(started.body["verification_uri"], started.body["user_code"],
                                user=user)  # fmt: skip
        self.flow_id = started.body["flow_id"]
        return self.post("/device/poll", {"flow_id": self.flow_id})

    def browser(self, user: str) -> tuple[str, dict[str, str]]:
        started = self.post("/browser", {"redirect_uri": CALLBACK})
        assert started.status == 200, started.body
        redirect = self.idp.authorize(started.body["authorization_url"], user=user)
        params = {k: v[0] for k, v in parse_qs(urlsplit(redirect).query).items()}
        return started.body["flow_id"], params

    def finish(self, flow_id: str, params: dict[str, str], **changes: str) -> Reply:
        body = {"flow_id": flow_id, "code": params["code"], "state": params["state"],
                "iss": params["iss"], **changes}  # fmt: skip
        return self.post("/browser/finish", body)

    def records(self) -> list[dict[str, Any]]:
        """The audit log's records of single sign-on, in order (the chain verified first)."""
        assert verify(self.audit_path, AUDIT_KEY).ok
        lines = self.audit_path.read_text().splitlines()
        return [r for r in map(json.loads, lines) if str(r["kind"]).startswith("identity.")]

    def ask(self, token: str) -> str:
        body = {"target": "orders", "access_level": "read-only", "duration": "30m", "reason": "x"}
        created = self.api.call("POST", "/api/v1/requests", body,
                                headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert created.status == 201, created.body
        return str(created.body["id"])

    def counts(self) -> tuple[int, int]:
        with self.api.store.read() as tx:
            people = len(tx.people())
        with sqlite3.connect(self.api.store.path) as conn:  # type: ignore[attr-defined]
            sessions = conn.execute("SELECT count(*) FROM api_sessions").fetchone()[0]
        return people, int(sessions)


def settings_for(idp: Idp, **changes: Any) -> OidcSettings:
    return replace(OidcSettings(idp.issuer, idp.client_id, SecretRef(env=SECRET_ENV)), **changes)


@pytest.fixture
def real_now_clock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(microsecond=0))  # the provider runs on real time


def harness(tmp_path: Path, clock: FakeClock, idp: Idp, monkeypatch: pytest.MonkeyPatch,
            **changes: Any) -> Iterator[Sso]:  # fmt: skip
    monkeypatch.setenv(SECRET_ENV, idp.client_secret)
    base = PolicyBox(sso_policy())
    api = ApiHarness(tmp_path, base, clock)
    sso = Sso(api, idp, settings_for(idp, **changes), base, tmp_path / "audit.jsonl")
    try:
        yield sso
    finally:
        api.run(api.context.identity.close())  # type: ignore[union-attr]
        api.close()
        sso.audit.close()


@pytest.fixture
def sso(tmp_path: Path, real_now_clock: FakeClock, idp: Idp,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Sso]:  # fmt: skip
    yield from harness(tmp_path, real_now_clock, idp, monkeypatch)


@pytest.fixture
def private_sso(tmp_path: Path, real_now_clock: FakeClock, private_idp: Idp,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Sso]:  # fmt: skip
    yield from harness(tmp_path, real_now_clock, private_idp, monkeypatch)


def test_the_api_says_how_to_sign_in(sso: Sso) -> None:
    described = sso.api.call("GET", "/api/v1/auth")
    assert described.body == {"oidc": {"issuer": sso.idp.issuer, "device_flow": True,
                                       "browser_flow": True}}  # fmt: skip


def test_alice_signs_in_with_the_device_flow_and_uses_the_api(sso: Sso) -> None:
    signed = sso.device("alice")
    assert signed.status == 200, signed.body
    assert (signed.body["user"], signed.body["groups"]) == ("alice", ["engineers"])
    assert signed.body["session_token"].startswith("pgs_")
    assert signed.body["refresh_token"]
    token = signed.body["session_token"]
    assert sso.get("/api/v1/status", token).status == 200
    body = {"target": "orders", "access_level": "read-only", "duration": "30m", "reason": "x"}
    created = sso.api.call("POST", "/api/v1/requests", body,
                           headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert (created.status, created.body["requester"]) == (201, "alice"), created.body
    again = sso.post("/device/poll", {"flow_id": sso.flow_id})  # a flow completes once
    assert again.status == 401
    assert "already completed" in again.message


def test_carol_signs_in_with_pkce_and_approves_until_the_provider_removes_her_group(
    private_sso: Sso,
) -> None:
    sso = private_sso
    alice = sso.device("alice").body["session_token"]
    flow_id, params = sso.browser("carol")
    carol = sso.finish(flow_id, params)
    assert carol.status == 200, carol.body
    assert carol.body["groups"] == ["leads", "engineers"]
    auth = {"Authorization": f"Bearer {carol.body['session_token']}"}
    alice_auth = {"Authorization": f"Bearer {alice}"}
    body = {"target": "orders", "access_level": "read-only", "duration": "30m", "reason": "x"}
    first = sso.api.call("POST", "/api/v1/requests", body, headers=alice_auth).body["id"]
    approved = sso.api.call("POST", f"/api/v1/requests/{first}/approve", headers=auth)
    assert (approved.status, approved.body["state"]) == (200, "active"), approved.body
    sso.idp.set_groups("carol", ["engineers"])
    refreshed = sso.post("/refresh", {"refresh_token": carol.body["refresh_token"]})
    assert refreshed.status == 200, refreshed.body
    assert refreshed.body["groups"] == ["engineers"]
    assert refreshed.body["refresh_token"] != carol.body["refresh_token"]  # rotated
    auth = {"Authorization": f"Bearer {refreshed.body['session_token']}"}
    second = sso.api.call("POST", "/api/v1/requests", body, headers=alice_auth).body["id"]
    refused = sso.api.call("POST", f"/api/v1/requests/{second}/approve", headers=auth)
    assert refused.status == 404, refused.body  # no longer an approver: she cannot even see it
    # The refresh ended the session it continues: one live session per sign-in.
    old = {"Authorization": f"Bearer {carol.body['session_token']}"}
    ended = sso.api.call("POST", f"/api/v1/requests/{second}/approve", headers=old)
    assert ended.status == 401
    assert "was ended at" in ended.message
    shown = sso.api.call("GET", f"/api/v1/requests/{second}", headers=alice_auth)
    assert shown.body["state"] == "pending"


def test_a_replayed_or_mismatched_state_is_refused(sso: Sso) -> None:
    flow_id, params = sso.browser("carol")
    assert sso.finish(flow_id, params).status == 200
    replayed = sso.finish(flow_id, params)
    assert replayed.status == 401
    assert "already completed" in replayed.message
    flow_id, params = sso.browser("carol")
    mismatched = sso.finish(flow_id, params, state="not-the-state")
    assert mismatched.status == 401
    assert "state" in mismatched.message
    assert sso.finish(flow_id, params).status == 401  # the flow is burned, not retried


def test_a_code_from_another_flow_fails_its_pkce_verifier(sso: Sso) -> None:
    first, _ = sso.browser("carol")
    _second, params = sso.browser("carol")
    with sso.api.store.read() as tx:
        state = tx.sign_in_flow(flow_digest(first)).state  # type: ignore[union-attr]
    stolen = sso.finish(first, params, state=str(state))  # first's state, second's code
    assert stolen.status == 401
    assert "invalid_grant" in stolen.message
    assert sso.counts() == (0, 0)


def test_a_token_expired_or_not_yet_valid_by_pgwardens_clock_is_refused(sso: Sso) -> None:
    sso.api.clock.advance(timedelta(minutes=10))  # past the provider's 300 s ID tokens
    expired = sso.device("alice")
    assert expired.status == 401
    assert "expired" in expired.message
    sso.api.clock.set(datetime.now(UTC) - timedelta(minutes=10))
    future = sso.device("alice")
    assert future.status == 401
    assert "future" in future.message
    assert sso.counts() == (0, 0)
    assert 'reason="expired"} 1.0' in metrics_text(sso)


def test_a_groups_claim_that_is_not_a_list_is_refused(private_sso: Sso) -> None:
    private_sso.idp.set_groups("alice", "engineers")
    refused = private_sso.device("alice")
    assert refused.status == 401
    assert "groups" in refused.message
    assert private_sso.counts() == (0, 0)


def test_a_person_outside_the_allowed_domains_is_refused(
    tmp_path: Path, real_now_clock: FakeClock, idp: Idp, monkeypatch: pytest.MonkeyPatch
) -> None:
    domains = frozenset({"corp.test"})
    for sso in harness(tmp_path, real_now_clock, idp, monkeypatch, allowed_domains=domains):
        refused = sso.device("alice")
        assert refused.status == 401
        assert "domain" in refused.message
        assert sso.counts() == (0, 0)


def test_a_rotated_key_is_fetched_once_the_refetch_interval_allows(private_sso: Sso) -> None:
    sso = private_sso
    assert sso.device("alice").status == 200
    sso.idp.restart(jwks={"keys": [rsa_signing_key("key-2"), sso.idp.jwks["keys"][0]]})
    refused = sso.device("alice")  # key-2 is unknown, and the keys were read just now
    assert refused.status == 401
    assert "key" in refused.message
    sso.api.clock.advance(MIN_REFETCH)
    assert sso.device("alice").status == 200
    assert sso.service.idp.keys.fetches == 2


def test_a_provider_down_refuses_new_sign_ins_and_keeps_sessions(private_sso: Sso) -> None:
    sso = private_sso
    token = sso.device("alice").body["session_token"]
    sso.idp.stop()
    sso.api.clock.advance(timedelta(hours=2))  # discovery's cache is stale: it must ask again
    down = sso.post("/device")
    assert (down.status, down.code) == (503, "idp_unavailable"), down.body
    sso.api.clock.set(datetime.now(UTC))
    assert sso.get("/api/v1/status", token).status == 200


def test_logout_revokes_the_session_and_expiry_ends_it(sso: Sso) -> None:
    signed = sso.device("alice").body
    assert sso.post("/logout", {"refresh_token": signed["refresh_token"]},
                    token=signed["session_token"]).status == 204  # fmt: skip
    ended = sso.get("/api/v1/status", signed["session_token"])
    assert ended.status == 401
    assert "pgwarden login" in ended.message
    refused = sso.post("/refresh", {"refresh_token": signed["refresh_token"]})
    assert refused.status == 401  # revoked at the provider too
    token = sso.device("alice").body["session_token"]
    sso.api.clock.advance(timedelta(hours=1))
    expired = sso.get("/api/v1/status", token)
    assert expired.status == 401
    assert "expired at" in expired.message


def test_a_redirect_off_loopback_is_refused(sso: Sso) -> None:
    refused = sso.post("/browser", {"redirect_uri": "http://192.0.2.1/callback"})
    assert refused.status == 400
    assert "loopback" in refused.message


def metrics_text(sso: Sso) -> str:
    return str(sso.api.call("GET", "/metrics").body)


def test_sign_in_refresh_and_logout_are_audited_ahead_and_verify(sso: Sso) -> None:
    signed = sso.device("alice").body
    refreshed = sso.post("/refresh", {"refresh_token": signed["refresh_token"]}).body
    assert sso.post("/logout", {"refresh_token": refreshed["refresh_token"]},
                    token=refreshed["session_token"]).status == 204  # fmt: skip
    assert sso.post("/refresh", {"refresh_token": "not-a-token"}).status == 401
    records = sso.records()
    kinds = [(r["kind"], r.get("method")) for r in records]
    assert kinds == [("identity.signed_in", "device"), ("identity.signed_in", "refresh"),
                     ("identity.signed_out", None),
                     ("identity.sign_in_refused", "refresh")]  # fmt: skip
    first, second, out, refused = records
    assert (first["user"], first["groups"], first["subject"]) == (
        "alice",
        ["engineers"],
        sso.idp.sub("alice"),
    )
    assert second["replaced"] == 1  # the device sign-in's session ended with the refresh
    assert out["session"] == second["session"] != first["session"]
    assert signed["session_token"] not in sso.audit_path.read_text()  # ids, never tokens
    assert refused["reason"] == "denied"
    assert verify(sso.audit_path, AUDIT_KEY).unsettled == ()  # every record ahead was settled


def test_logout_of_an_expired_session_still_revokes_the_refresh_token(sso: Sso) -> None:
    signed = sso.device("alice").body
    sso.api.clock.advance(timedelta(hours=2))  # the session is over; the CLI signs out anyway
    assert sso.get("/api/v1/status", signed["session_token"]).status == 401
    assert sso.post("/logout", {"refresh_token": signed["refresh_token"]},
                    token=signed["session_token"]).status == 204  # fmt: skip
    sso.api.clock.set(datetime.now(UTC))
    refused = sso.post("/refresh", {"refresh_token": signed["refresh_token"]})
    assert refused.status == 401  # revoked at the provider
    assert "removed" not in refused.message  # a revoked token is not a person gone
    with sso.api.store.read() as tx:
        assert tx.person(UserName("alice")).removed_at is None  # type: ignore[union-attr]
    unknown = sso.post("/logout", {}, token="pgs_" + "A" * 43)
    assert unknown.status == 401


def test_a_person_removed_at_the_provider_loses_sessions_grants_and_requests(
    private_sso: Sso,
) -> None:
    sso = private_sso
    alice = sso.device("alice").body
    carol = sso.device("carol").body["session_token"]
    granted, waiting = sso.ask(alice["session_token"]), sso.ask(alice["session_token"])
    approve = sso.api.call("POST", f"/api/v1/requests/{granted}/approve",
                           headers={"Authorization": f"Bearer {carol}"})  # fmt: skip
    assert approve.body["state"] == "active", approve.body
    subject = sso.idp.sub("alice")
    sso.idp.remove_user("alice")  # she left the organization
    refused = sso.post("/refresh", {"refresh_token": alice["refresh_token"]})
    assert refused.status == 401
    assert "no longer exists" in refused.message
    assert sso.get("/api/v1/status", alice["session_token"]).status == 401
    with sso.api.store.read() as tx:
        assert tx.person(UserName("alice")).removed_at is not None  # type: ignore[union-attr]
        ended = {i: tx.get_request(RequestId(i)) for i in (granted, waiting)}
    assert [(r.state.value, r.closed_by) for r in ended.values()] == [  # type: ignore[union-attr]
        ("revoked", "<identity>"),
        ("cancelled", "<identity>"),
    ]
    assert "alice" not in sso.people().users
    removed = [r for r in sso.records() if r["kind"] == "identity.person_removed"]
    assert [(r["user"], r["subject"]) for r in removed] == [("alice", subject)]
    assert "carol" in sso.people().users  # her approval stays hers: nothing else changed
