"""`/metrics` through the API: no secrets, and no new series from what callers send (row 45)."""

from __future__ import annotations

import secrets

from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.api import ApiHarness, PolicyBox, Receiver, webhook, with_webhooks


def _series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_carry_no_secrets_and_random_input_creates_no_series(
    api: ApiHarness, policy: PolicyBox
) -> None:
    broken = Receiver(statuses=(500,) * 50)
    try:
        with_webhooks(policy, webhook(broken.url))
        request_id = api.active_request()
        credential = api.act("alice", request_id, "credentials").body
        before = api.call("GET", "/metrics")
        assert before.status == 200
        assert before.headers["content-type"].startswith("text/plain")
        api.run(api.deliverer.drain(5))
        baseline = _series(api.call("GET", "/metrics").body)
        for _ in range(20):  # random users, tokens, targets, paths
            junk = secrets.token_hex(8)
            api.call("GET", f"/api/v1/{junk}", headers={"Authorization": f"Bearer pgw_{junk}"})
            api.call("POST", "/api/v1/requests", {"target": junk, "access_level": junk,
                                                  "duration": "1h"}, user="alice")  # fmt: skip
            api.call("GET", f"/api/v1/requests/{junk}", user="mallory")
        api.run(api.deliverer.drain(5))
        after = api.call("GET", "/metrics").body
        assert _series(after) == baseline
        for secret in (credential["password"], api.token("alice"), api.token("carol")):
            assert secret not in after
        for person in ("alice", "carol", "mallory"):
            assert person not in after
    finally:
        broken.close()
