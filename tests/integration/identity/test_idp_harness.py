"""The test OpenID provider works as single sign-on tests need it to, proved with a plain OIDC
client written here (urllib, and RS256 checked with `cryptography`) and the browser stand-in:
discovery, the device flow and the PKCE code flow end to end, refresh tokens that follow the
accounts file (groups changed, person removed), revocation, and signing-key rotation by restart.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fixtures.idp import DEVICE_GRANT, Idp, rsa_signing_key, running_idp
from tests.fixtures.idp_browser import IdpPageError, LoginRefused

CALLBACK = "http://127.0.0.1:{port}/callback"
ANY_LOOPBACK_PORT = 48123  # RFC 8252: a native client's loopback redirect may use any port


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class OidcClient:
    """The relying party's side, as plainly as the protocol allows."""

    def __init__(self, idp: Idp, client_id: str = "pgwarden") -> None:
        self.idp = idp
        self.client_id = client_id
        self.secret = idp.clients[client_id].secret
        self.config = self.get(f"{idp.issuer}/.well-known/openid-configuration")

    def get(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())

    def post(self, endpoint: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if self.secret is None:
            form = {**form, "client_id": self.client_id}
        else:
            pair = f"{self.client_id}:{self.secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        request = urllib.request.Request(self.config[endpoint], urlencode(form).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as refused:
            with refused:
                return refused.code, json.loads(refused.read() or b"{}")

    def device_authorization(self) -> dict[str, Any]:
        scope = "openid profile email groups offline_access"
        status, body = self.post("device_authorization_endpoint", {"scope": scope})
        assert status == 200, body
        return body

    def device_token(self, device_code: str) -> tuple[int, dict[str, Any]]:
        form = {"grant_type": DEVICE_GRANT, "device_code": device_code}
        return self.post("token_endpoint", form)

    def refresh(self, refresh_token: str) -> tuple[int, dict[str, Any]]:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return self.post("token_endpoint", form)

    def id_claims(self, tokens: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(header, claims) of the response's ID token, its signature and audience checked."""
        header, claims = verify_rs256(tokens["id_token"], self.get(self.config["jwks_uri"]))
        assert claims["iss"] == self.idp.issuer
        assert claims["aud"] == self.client_id
        return header, claims

    def signed_in_by_device(self, user: str) -> dict[str, Any]:
        """The token response of a device flow `user` approved through the browser."""
        started = self.device_authorization()
        self.idp.approve_device(started["verification_uri"], started["user_code"], user=user)
        status, tokens = self.device_token(started["device_code"])
        assert status == 200, tokens
        return tokens


def verify_rs256(token: str, jwks: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, signature = token.split(".")
    header = json.loads(b64decode(head))
    assert header["alg"] == "RS256"
    (jwk,) = [key for key in jwks["keys"] if key["kid"] == header["kid"]]
    numbers = rsa.RSAPublicNumbers(
        int.from_bytes(b64decode(jwk["e"]), "big"), int.from_bytes(b64decode(jwk["n"]), "big")
    )
    numbers.public_key().verify(
        b64decode(signature), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    return header, json.loads(b64decode(body))


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, b64encode(hashlib.sha256(verifier.encode()).digest())


def authorization_url(client: OidcClient, challenge: str | None, **extra: str) -> str:
    params = {
        "client_id": client.client_id, "response_type": "code",
        "redirect_uri": CALLBACK.format(port=ANY_LOOPBACK_PORT),
        "scope": "openid profile email groups offline_access", "prompt": "consent",
        "state": secrets.token_urlsafe(16), "nonce": secrets.token_urlsafe(16), **extra,
    }  # fmt: skip
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return f"{client.config['authorization_endpoint']}?{urlencode(params)}"


def callback_params(redirect: str) -> dict[str, str]:
    assert redirect.startswith(CALLBACK.format(port=ANY_LOOPBACK_PORT) + "?"), redirect
    return {name: values[0] for name, values in parse_qs(urlsplit(redirect).query).items()}


def exchange(client: OidcClient, code: str, verifier: str) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": CALLBACK.format(port=ANY_LOOPBACK_PORT)}  # fmt: skip
    return client.post("token_endpoint", form)


def test_discovery_document_names_the_issuer_endpoints_and_public_keys(idp: Idp) -> None:
    config = OidcClient(idp).config
    assert config["issuer"] == idp.issuer
    assert config["device_authorization_endpoint"] == f"{idp.issuer}/device/auth"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["response_types_supported"] == ["code"]
    assert {"refresh_token", DEVICE_GRANT} <= set(config["grant_types_supported"])
    assert {"openid", "profile", "email", "groups"} <= set(config["scopes_supported"])
    jwks = OidcClient(idp).get(config["jwks_uri"])
    assert [(key["kid"], key["alg"]) for key in jwks["keys"]] == [("key-1", "RS256")]
    assert not {"d", "p", "q"} & set(jwks["keys"][0])  # public halves only


def test_device_flow_signs_alice_in_with_her_groups(idp: Idp) -> None:
    client = OidcClient(idp)
    started = client.device_authorization()
    assert client.device_token(started["device_code"])[1]["error"] == "authorization_pending"
    page = idp.approve_device(started["verification_uri"], started["user_code"], user="alice")
    assert page.kind == "device-done"
    status, tokens = client.device_token(started["device_code"])
    assert status == 200, tokens
    _, claims = client.id_claims(tokens)
    assert claims["sub"] == idp.sub("alice") != "alice"
    assert (claims["preferred_username"], claims["groups"]) == ("alice", ["engineers"])
    assert (claims["email"], claims["email_verified"]) == ("alice@example.test", True)
    assert claims["exp"] - claims["iat"] == idp.lifetimes.id_token
    assert tokens["expires_in"] == idp.lifetimes.access_token
    assert tokens["refresh_token"]


def test_device_flow_of_the_public_client_through_the_complete_uri(idp: Idp) -> None:
    client = OidcClient(idp, "pgwarden-cli")
    started = client.device_authorization()
    idp.approve_device(started["verification_uri_complete"], user="carol")
    status, tokens = client.device_token(started["device_code"])
    assert status == 200, tokens
    assert client.id_claims(tokens)[1]["groups"] == ["leads", "engineers"]


def test_device_flow_denied_at_consent_gives_access_denied(idp: Idp) -> None:
    client = OidcClient(idp)
    started = client.device_authorization()
    idp.approve_device(started["verification_uri"], started["user_code"], user="alice",
                       consent=False)  # fmt: skip
    status, refused = client.device_token(started["device_code"])
    assert (status, refused["error"]) == (400, "access_denied")
    assert refused["error_description"] == "the person denied the request"


def test_a_wrong_password_is_refused_at_the_sign_in_form(idp: Idp) -> None:
    client = OidcClient(idp)
    started = client.device_authorization()
    with pytest.raises(LoginRefused, match="Wrong username or password"):
        idp.approve_device(started["verification_uri"], started["user_code"], user="alice",
                           password="not-alices-password")  # fmt: skip
    assert client.device_token(started["device_code"])[1]["error"] == "authorization_pending"


def test_code_flow_with_pkce_signs_carol_in(idp: Idp) -> None:
    client = OidcClient(idp)
    verifier, challenge = pkce_pair()
    url = authorization_url(client, challenge)
    sent = parse_qs(urlsplit(url).query)
    params = callback_params(idp.authorize(url, user="carol"))
    assert params["state"] == sent["state"][0]
    assert params["iss"] == idp.issuer  # RFC 9207
    status, tokens = exchange(client, params["code"], verifier)
    assert status == 200, tokens
    _, claims = client.id_claims(tokens)
    assert claims["nonce"] == sent["nonce"][0]
    assert (claims["preferred_username"], claims["groups"]) == ("carol", ["leads", "engineers"])
    assert tokens["refresh_token"]


def test_code_flow_refuses_a_wrong_verifier_and_a_missing_challenge(idp: Idp) -> None:
    client = OidcClient(idp)
    _, challenge = pkce_pair()
    params = callback_params(idp.authorize(authorization_url(client, challenge), user="alice"))
    status, refused = exchange(client, params["code"], pkce_pair()[0])
    assert (status, refused["error"]) == (400, "invalid_grant")
    params = callback_params(idp.authorize(authorization_url(client, None), user="alice"))
    assert params["error"] == "invalid_request"
    assert "requires PKCE" in params["error_description"]


def test_code_flow_denied_at_consent_redirects_with_access_denied(idp: Idp) -> None:
    client = OidcClient(idp)
    url = authorization_url(client, pkce_pair()[1])
    assert callback_params(idp.authorize(url, user="alice", consent=False))["error"] == (
        "access_denied")  # fmt: skip


def test_a_redirect_uri_off_loopback_is_refused_before_sign_in(idp: Idp) -> None:
    client = OidcClient(idp)
    url = authorization_url(client, pkce_pair()[1], redirect_uri="http://192.0.2.1/callback")
    with pytest.raises(IdpPageError, match="redirect_uri"):
        idp.authorize(url, user="alice")


def test_a_second_sign_in_in_the_same_browser_reuses_the_session(idp: Idp) -> None:
    client = OidcClient(idp)

    async def twice() -> tuple[str, str]:
        async with idp.browser() as browser:
            first = await browser.authorize(authorization_url(client, pkce_pair()[1]),
                                            user="carol")  # fmt: skip
            # No password this time: a sign-in form would be refused, so none was shown.
            second = await browser.authorize(authorization_url(client, pkce_pair()[1]),
                                             user="carol", password="")  # fmt: skip
            return first, second

    first, second = asyncio.run(twice())
    assert "code" in callback_params(first)
    assert "code" in callback_params(second)


def test_refresh_returns_the_groups_changed_since_sign_in(private_idp: Idp) -> None:
    client = OidcClient(private_idp)
    tokens = client.signed_in_by_device("alice")
    private_idp.set_groups("alice", ["engineers", "oncall"])
    status, refreshed = client.refresh(tokens["refresh_token"])
    assert status == 200, refreshed
    assert client.id_claims(refreshed)[1]["groups"] == ["engineers", "oncall"]
    assert refreshed["refresh_token"] != tokens["refresh_token"]  # rotated
    status, reused = client.refresh(tokens["refresh_token"])
    assert (status, reused["error"]) == (400, "invalid_grant")


def test_refresh_of_a_removed_person_is_refused(private_idp: Idp) -> None:
    client = OidcClient(private_idp)
    tokens = client.signed_in_by_device("carol")
    private_idp.remove_user("carol")
    status, refused = client.refresh(tokens["refresh_token"])
    assert (status, refused["error"]) == (400, "invalid_grant")
    assert "refresh token invalid (referenced account not found)" in private_idp.log_text()


def test_a_revoked_refresh_token_is_refused(idp: Idp) -> None:
    client = OidcClient(idp)
    tokens = client.signed_in_by_device("alice")
    status, active = client.post("introspection_endpoint", {"token": tokens["access_token"]})
    assert (status, active["active"], active["sub"]) == (200, True, idp.sub("alice"))
    form = {"token": tokens["refresh_token"], "token_type_hint": "refresh_token"}
    assert client.post("revocation_endpoint", form)[0] == 200
    status, refused = client.refresh(tokens["refresh_token"])
    assert (status, refused["error"]) == (400, "invalid_grant")


def test_restart_with_a_new_key_rotates_signing_and_keeps_refresh_tokens(
    private_idp: Idp,
) -> None:
    client = OidcClient(private_idp)
    tokens = client.signed_in_by_device("alice")
    assert client.id_claims(tokens)[0]["kid"] == "key-1"
    old_key = private_idp.jwks["keys"][0]
    issuer = private_idp.issuer
    private_idp.restart(jwks={"keys": [rsa_signing_key("key-2"), old_key]})
    assert private_idp.issuer == issuer
    published = client.get(client.config["jwks_uri"])
    assert [key["kid"] for key in published["keys"]] == ["key-2", "key-1"]
    status, refreshed = client.refresh(tokens["refresh_token"])
    assert status == 200, refreshed
    header, claims = client.id_claims(refreshed)
    assert (header["kid"], claims["preferred_username"]) == ("key-2", "alice")
    private_idp.restart(jwks={"keys": [private_idp.jwks["keys"][0]]})
    assert [key["kid"] for key in client.get(client.config["jwks_uri"])["keys"]] == ["key-2"]


def test_refresh_tokens_stay_valid_when_rotation_is_off(tmp_path: Path) -> None:
    with running_idp(tmp_path, rotate_refresh_tokens=False) as provider:
        client = OidcClient(provider)
        tokens = client.signed_in_by_device("alice")
        for _ in range(2):
            status, refreshed = client.refresh(tokens["refresh_token"])
            assert status == 200, refreshed
            assert refreshed["refresh_token"] == tokens["refresh_token"]
