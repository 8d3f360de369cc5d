"""Garbage in, a 4xx with a clear JSON message out — on every endpoint (SECURITY.md row 44)."""

from __future__ import annotations

import http.client
import json

import pytest

from proxy.api import schemas
from proxy.api.schemas import MAX_BODY_BYTES
from tests.fixtures.api import ApiHarness

JSON = {"Content-Type": "application/json"}
BODY_ENDPOINTS = [
    ("POST", "/api/v1/requests"),
    ("POST", "/api/v1/requests/{id}/approve"),
    ("POST", "/api/v1/requests/{id}/deny"),
    ("POST", "/api/v1/requests/{id}/cancel"),
    ("POST", "/api/v1/requests/{id}/revoke"),
    ("POST", "/api/v1/requests/{id}/credentials"),
    ("DELETE", "/api/v1/sessions/5e55a0"),
]
GARBAGE = [
    (b"{", "bad_json", "not valid JSON"),
    (b"[1, 2]", "bad_json", "must be a JSON object"),
    (b'"text"', "bad_json", "must be a JSON object"),
    (b"\xff\xfe{}", "bad_json", "not valid UTF-8"),
    (b'{"a": 1, "a": 2}', "bad_json", "appears twice"),
    (b"[" * 100_000 + b"]" * 100_000, None, None),  # over the size limit: 413
    (b"[" * 30_000 + b"]" * 30_000, "bad_json", "nested too deeply"),
    (b'{"n": ' + b"9" * 5000 + b"}", "bad_json", "not valid JSON"),
    (b'{"unknown_field": "x"}', "invalid_body", "unknown field(s) 'unknown_field'"),
]


def _path(api: ApiHarness, template: str) -> str:
    return template.format(id=api.create().body["id"])


@pytest.mark.parametrize(("method", "template"), BODY_ENDPOINTS)
@pytest.mark.parametrize("garbage", GARBAGE, ids=[g[1] or "huge" for g in GARBAGE])
def test_garbage_bodies_get_a_4xx_with_a_message_on_every_endpoint(
    api: ApiHarness, method: str, template: str, garbage: tuple[bytes, str | None, str | None]
) -> None:
    raw, code, wanted = garbage
    api.add_session(user="alice", session_id="5e55a0")
    reply = api.call(method, _path(api, template), raw=raw, headers=JSON, user="carol")
    if code is None:
        assert (reply.status, reply.code) == (413, "body_too_large")
        assert str(MAX_BODY_BYTES) in reply.message
        return
    assert (reply.status, reply.code) == (400, code)
    assert wanted is not None
    assert wanted in reply.message


@pytest.mark.parametrize(("method", "template"), BODY_ENDPOINTS)
def test_a_body_that_is_not_json_is_415(api: ApiHarness, method: str, template: str) -> None:
    reply = api.call(method, _path(api, template), raw=b"target=orders", user="carol",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert (reply.status, reply.code) == (415, "unsupported_media_type")
    assert "application/json" in reply.message


@pytest.mark.parametrize(
    ("fields", "wanted"),
    [
        ({"target": 5, "access_level": "read-only", "duration": "1h"}, "target: must be a string"),
        ({"target": "orders", "access_level": None, "duration": "1h"},
         "access_level: must be a string, got null"),
        ({"target": "orders", "access_level": "read-only", "duration": 3600},
         "duration: must be a string, got a number"),
        ({"target": ["orders"], "access_level": "read-only"}, "duration: required"),
        ({}, "access_level: required; duration: required; target: required"),
    ],
)  # fmt: skip
def test_wrong_types_and_missing_fields_are_named(
    api: ApiHarness, fields: dict[str, object], wanted: str
) -> None:
    reply = api.call("POST", "/api/v1/requests", fields, user="alice")
    assert (reply.status, reply.code) == (400, "invalid_body")
    assert wanted in reply.message


@pytest.mark.parametrize(
    ("verb", "body", "wanted"),
    [
        ("approve", {"comment": 1}, "comment: must be a string"),
        ("approve", {"reason": "x"}, "unknown field(s) 'reason' (this endpoint takes: comment)"),
        ("deny", {"comment": "x"}, "reason: required"),
        ("revoke", {"reason": True}, "reason: must be a string, got true/false"),
        ("cancel", {"reason": "x"}, "this endpoint takes: none"),
        ("credentials", {"user": "bob"}, "unknown field(s) 'user'"),
    ],
)
def test_each_action_checks_its_own_fields(
    api: ApiHarness, verb: str, body: dict[str, object], wanted: str
) -> None:
    request_id = api.create().body["id"]
    reply = api.act("carol", request_id, verb, body)
    assert (reply.status, reply.code) == (400, "invalid_body")
    assert wanted in reply.message


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        ("state=bogus", "state must be one of pending, active"),
        ("limit=0", "limit must be a number from 1 to 1000"),
        ("limit=1e3", "limit must be a number"),
        ("limit=99999999999999999999", "limit must be a number"),
        ("sort=id", "unknown parameter 'sort'"),
        ("state=active&state=pending", "given twice"),
    ],
)
def test_bad_query_parameters_are_400(api: ApiHarness, query: str, wanted: str) -> None:
    reply = api.call("GET", f"/api/v1/requests?{query}", user="alice")
    assert (reply.status, reply.code) == (400, "invalid_query")
    assert wanted in reply.message


@pytest.mark.parametrize(
    "request_id", ["XYZ", "..%2F..%2Fetc", "a" * 65, "%00", "0123456789ABCDEF"]
)
def test_odd_ids_are_just_not_found(api: ApiHarness, request_id: str) -> None:
    reply = api.call("GET", f"/api/v1/requests/{request_id}", user="alice")
    assert (reply.status, reply.code) == (404, "not_found")


def test_unknown_paths_and_methods_answer_in_json(api: ApiHarness) -> None:
    missing = api.call("GET", "/api/v2/requests", user="alice")
    assert (missing.status, missing.code) == (404, "not_found")
    wrong = api.call("PUT", "/api/v1/requests", {}, user="alice")
    assert (wrong.status, wrong.code) == (405, "method_not_allowed")
    assert "allowed: GET, HEAD, POST" in wrong.message
    assert api.call("GET", "/").code == "unauthenticated"  # only three paths are public
    root = api.call("GET", "/", user="alice")
    assert (root.status, root.code) == (404, "not_found")


@pytest.mark.parametrize(
    "path",
    ["/api/v1/../v1/requests", "//api/v1/requests", "/API/v1/requests", "/api/v1/requests/",
     "/healthz/../api/v1/requests", "/api/v1/%72equests", "/./api/v1/requests",
     "/healthz%2F..%2Fapi/v1/requests", "/metrics/../api/v1/sessions"],
)  # fmt: skip
def test_no_spelling_of_a_path_reaches_the_api_without_a_token(api: ApiHarness, path: str) -> None:
    api.create()
    reply = api.call("GET", path)
    assert reply.status in (401, 404)
    assert "requests" not in (reply.body if isinstance(reply.body, dict) else {})


def _announce_body(api: ApiHarness, length: int, sent: bytes) -> tuple[int, str]:
    """POST with `Content-Length: length` but only `sent` bytes; the status and error code."""
    conn = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=10)
    try:
        conn.putrequest("POST", "/api/v1/requests")
        conn.putheader("Authorization", f"Bearer {api.token('alice')}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        conn.send(sent)
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())["error"]["code"]
    finally:
        conn.close()


def test_an_announced_oversized_body_is_refused_before_it_is_sent(api: ApiHarness) -> None:
    assert _announce_body(api, 10 * MAX_BODY_BYTES, b"{}") == (413, "body_too_large")
    assert api.call("GET", "/healthz").status == 200


def test_a_body_that_never_arrives_times_out(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schemas, "BODY_TIMEOUT", 0.1)
    assert _announce_body(api, 100, b"{") == (408, "body_timeout")
    assert api.call("GET", "/healthz").status == 200


def test_a_chunked_body_is_cut_off_at_the_limit(api: ApiHarness) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=10)
    chunks = (b'{"reason": "' + b"x" * 4096 for _ in range(40))  # 160 KiB, no Content-Length
    try:
        headers = {"Authorization": f"Bearer {api.token('alice')}", **JSON}
        conn.request("POST", "/api/v1/requests", body=chunks, headers=headers, encode_chunked=True)
        reply = conn.getresponse()
        assert reply.status == 413
        assert json.loads(reply.read())["error"]["code"] == "body_too_large"
    finally:
        conn.close()
