"""Several worker processes on one port: what they divide and describe to each other.

Limits shared out, audit log paths, session descriptions (`proxy/workers/shares.py`), cancel keys
that name their worker (`SessionRegistry(worker=k)`), and the merged /metrics (`WorkerMetrics`, with
real prometheus_client registries).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter as Tally
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

from proxy.audit.records import worker_audit_path, worker_audit_paths
from proxy.config import MAX_WORKERS, Limits, ThrottleSettings
from proxy.session.registry import SessionRegistry
from proxy.session.session import SessionInfo
from proxy.workers.metrics import WorkerMetrics
from proxy.workers.shares import info_from_json, info_to_json, share_limits
from tests.fixtures.workers import (
    FakeSession,
    make_info,
    samples_of,
    scrape,
    worker_registry,
)

# --- share_limits ---------------------------------------------------------------------------


def make_limits(
    caps: tuple[int, int, int, int] = (100, 10, 50, 5),
    user_burst: int = 10,
    source_burst: int = 30,
) -> Limits:
    return Limits(
        *caps,
        max_message_bytes=1 << 20,
        failed_logins_per_user=ThrottleSettings(user_burst, timedelta(seconds=6)),
        failed_logins_per_source=ThrottleSettings(source_burst, timedelta(seconds=2)),
        failed_logins_per_user_and_source=ThrottleSettings(user_burst, timedelta(seconds=6)),
    )


def test_one_worker_keeps_the_limits_themselves() -> None:
    limits = make_limits()
    assert share_limits(limits, 1) is limits


def test_each_of_n_workers_gets_a_floored_nth_of_every_cap_and_a_slower_bucket() -> None:
    limits = make_limits(caps=(100, 10, 50, 5), user_burst=10, source_burst=30)
    share = share_limits(limits, 4)
    assert (share.max_sessions, share.max_sessions_per_source) == (25, 2)
    assert (share.max_preauth_connections, share.max_preauth_per_source) == (12, 1)
    assert share.failed_logins_per_user == ThrottleSettings(2, timedelta(seconds=24))
    assert share.failed_logins_per_source == ThrottleSettings(7, timedelta(seconds=8))
    assert share.failed_logins_per_user_and_source == ThrottleSettings(2, timedelta(seconds=24))
    assert share.max_message_bytes == limits.max_message_bytes


def test_a_cap_smaller_than_the_worker_count_still_admits_one_per_worker() -> None:
    share = share_limits(make_limits(caps=(3, 1, 2, 1), user_burst=1, source_burst=2), 8)
    assert (share.max_sessions, share.max_sessions_per_source) == (1, 1)
    assert (share.max_preauth_connections, share.max_preauth_per_source) == (1, 1)
    assert share.failed_logins_per_user.burst == 1
    assert share.failed_logins_per_source.burst == 1
    assert share.failed_logins_per_user_and_source.burst == 1


caps = st.integers(min_value=1, max_value=100_000)


@given(
    workers=st.integers(min_value=2, max_value=MAX_WORKERS),
    totals=st.tuples(caps, caps, caps, caps, caps, caps, caps),
    refill=st.integers(min_value=1, max_value=3600),
)
def test_shares_never_add_up_to_more_than_a_cap_of_at_least_n(
    workers: int, totals: tuple[int, int, int, int, int, int, int], refill: int
) -> None:
    every = timedelta(seconds=refill)
    limits = replace(
        make_limits(totals[:4]),
        failed_logins_per_user=ThrottleSettings(totals[4], every),
        failed_logins_per_source=ThrottleSettings(totals[5], every),
        failed_logins_per_user_and_source=ThrottleSettings(totals[6], every),
    )
    share = share_limits(limits, workers)
    pairs = [
        (limits.max_sessions, share.max_sessions),
        (limits.max_sessions_per_source, share.max_sessions_per_source),
        (limits.max_preauth_connections, share.max_preauth_connections),
        (limits.max_preauth_per_source, share.max_preauth_per_source),
        (limits.failed_logins_per_user.burst, share.failed_logins_per_user.burst),
        (limits.failed_logins_per_source.burst, share.failed_logins_per_source.burst),
        (
            limits.failed_logins_per_user_and_source.burst,
            share.failed_logins_per_user_and_source.burst,
        ),
    ]
    for total, one in pairs:
        assert one >= 1
        assert one == max(1, total // workers)
        if total >= workers:
            assert one * workers <= total
    buckets = (
        share.failed_logins_per_user,
        share.failed_logins_per_source,
        share.failed_logins_per_user_and_source,
    )
    for rule in buckets:
        assert rule.refill_every == every * workers  # N buckets refill as fast as one did
    assert share.max_message_bytes == limits.max_message_bytes


# --- audit log paths ------------------------------------------------------------------------


def test_the_primary_writes_the_configured_audit_log() -> None:
    assert worker_audit_path(Path("/var/log/pgw/audit.jsonl"), 0) == Path(
        "/var/log/pgw/audit.jsonl"
    )


@pytest.mark.parametrize(
    ("configured", "worker", "expected"),
    [
        ("/var/log/pgw/audit.jsonl", 3, "/var/log/pgw/audit.worker3.jsonl"),
        ("/var/log/pgw/audit.jsonl", 63, "/var/log/pgw/audit.worker63.jsonl"),
        ("/var/log/pgw/audit", 3, "/var/log/pgw/audit.worker3"),
        ("relative/audit.log", 1, "relative/audit.worker1.log"),
    ],
)
def test_a_worker_writes_its_own_chain_beside_the_primarys(
    configured: str, worker: int, expected: str
) -> None:
    assert worker_audit_path(Path(configured), worker) == Path(expected)


def test_the_audit_paths_are_the_primarys_then_every_existing_workers_in_order(
    tmp_path: Path,
) -> None:
    primary = tmp_path / "audit.jsonl"
    for name in ("audit.jsonl", "audit.worker1.jsonl", "audit.worker3.jsonl",
                 "audit.worker10.jsonl", "audit.worker63.jsonl", "audit.worker64.jsonl",
                 "audit.jsonl.000001", "other.worker2.jsonl"):  # fmt: skip
        (tmp_path / name).write_text("")
    assert worker_audit_paths(primary, MAX_WORKERS) == [
        primary,
        tmp_path / "audit.worker1.jsonl",
        tmp_path / "audit.worker3.jsonl",
        tmp_path / "audit.worker10.jsonl",  # by worker number, not by name
        tmp_path / "audit.worker63.jsonl",  # the last worker there can be; 64 is none
    ]


def test_the_primarys_audit_log_is_listed_even_before_it_exists(tmp_path: Path) -> None:
    # `audit verify --config` then reports the missing file rather than checking nothing.
    (tmp_path / "audit.worker2").write_text("")
    primary = tmp_path / "audit"
    assert worker_audit_paths(primary, MAX_WORKERS) == [primary, tmp_path / "audit.worker2"]


# --- session descriptions -------------------------------------------------------------------


def test_a_session_description_survives_a_json_round_trip() -> None:
    info = make_info()
    wire = json.loads(json.dumps(info_to_json(info)))
    assert wire["started_at"] == "2026-01-05T09:00:00+00:00"
    assert info_from_json(wire) == info


offsets = st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(minutes=330))])
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=offsets
)


@given(
    st.builds(
        SessionInfo,
        st.text(),
        st.text(),
        st.text(),
        st.text(),
        st.text(),
        st.text(),
        st.text(),
        st.booleans(),
        st.text(),
        moments,
        moments,
        st.integers(-(2**31), 2**31 - 1),
    )
)
def test_any_session_description_survives_a_json_round_trip(info: SessionInfo) -> None:
    assert info_from_json(json.loads(json.dumps(info_to_json(info)))) == info


def _without(name: str) -> dict[str, object]:
    fields = info_to_json(make_info())
    del fields[name]
    return fields


@pytest.mark.parametrize(
    "fields",
    [
        _without("user"),
        _without("started_at"),
        {**info_to_json(make_info()), "extra": 1},
        [info_to_json(make_info())],
        None,
        "5e55a0",
        {},
    ],
    ids=["missing", "missing-time", "extra", "list", "null", "string", "empty"],
)
def test_what_is_not_a_session_description_is_a_value_error(fields: object) -> None:
    with pytest.raises(ValueError, match="not a session description"):
        info_from_json(fields)


def test_a_session_description_with_a_bad_time_is_a_value_error() -> None:
    fields = {**info_to_json(make_info()), "grant_ends_at": "tomorrow"}
    with pytest.raises(ValueError, match="tomorrow"):
        info_from_json(fields)


# --- cancel keys ----------------------------------------------------------------------------


BACKEND_PID = 31337  # the upstream backend's real pid: BackendKeyData carries it unchanged


@pytest.mark.parametrize(
    ("worker", "workers", "random_bits"), [(0, 1, 32), (1, 2, 31), (63, 64, 26)]
)
def test_every_cancel_secret_names_the_worker_that_issued_it(
    worker: int, workers: int, random_bits: int
) -> None:
    registry: SessionRegistry[Any] = SessionRegistry(worker=worker, workers=workers)
    secrets_seen = set()
    for _ in range(500):
        secret = registry.new_cancel_key(BACKEND_PID)
        assert len(secret) == 4
        assert registry.owner(secret) == worker
        secrets_seen.add(secret)
    assert len(secrets_seen) > 490  # random, not a counter stuck on one value
    # The part that names the worker is as short as the number of workers allows.
    assert (workers - 1).bit_length() == 32 - random_bits


def test_the_worker_bits_leave_the_rest_of_the_secret_random(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry: SessionRegistry[Any] = SessionRegistry(worker=1, workers=2)
    monkeypatch.setattr("secrets.randbits", lambda k: (1 << k) - 1)
    assert registry.new_cancel_key(BACKEND_PID) == b"\xff\xff\xff\xff"
    monkeypatch.setattr("secrets.randbits", lambda k: 0)
    assert registry.new_cancel_key(BACKEND_PID) == b"\x00\x00\x00\x01"


def test_a_new_cancel_secret_skips_one_a_live_session_on_that_pid_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry: SessionRegistry[Any] = SessionRegistry(worker=5, workers=8)
    taken = FakeSession(make_info(), BACKEND_PID, (7 << 3 | 5).to_bytes(4, "big"))
    registry.add(taken)
    draws = iter([7, 7, 9])
    monkeypatch.setattr("secrets.randbits", lambda k: next(draws))
    assert registry.new_cancel_key(BACKEND_PID + 1) == (7 << 3 | 5).to_bytes(4, "big")
    assert registry.new_cancel_key(BACKEND_PID) == (9 << 3 | 5).to_bytes(4, "big")


def test_equal_pids_of_two_upstream_servers_do_not_collide() -> None:
    registry: SessionRegistry[Any] = SessionRegistry()
    one = FakeSession(make_info("aaaa"), BACKEND_PID, registry.new_cancel_key(BACKEND_PID))
    registry.add(one)
    two = FakeSession(make_info("bbbb"), BACKEND_PID, registry.new_cancel_key(BACKEND_PID))
    registry.add(two)
    assert registry.find_by_cancel_key(BACKEND_PID, one.cancel_secret) is one
    assert registry.find_by_cancel_key(BACKEND_PID, two.cancel_secret) is two
    assert registry.find_by_cancel_key(BACKEND_PID + 1, one.cancel_secret) is None
    assert registry.find_by_cancel_key(BACKEND_PID, b"\0\0\0\0") is None
    registry.remove(one)
    assert registry.find_by_cancel_key(BACKEND_PID, one.cancel_secret) is None
    assert registry.find_by_cancel_key(BACKEND_PID, two.cancel_secret) is two
    registry.remove(two)
    assert registry.find_by_cancel_key(BACKEND_PID, two.cancel_secret) is None
    assert len(registry) == 0


@pytest.mark.parametrize("worker", [64, -1, 1000, 2])
def test_a_worker_index_that_does_not_fit_the_key_is_refused(worker: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        SessionRegistry(worker=worker, workers=2 if worker == 2 else 64)


# --- merged metrics -------------------------------------------------------------------------


def test_the_merged_metrics_label_every_sample_with_its_worker() -> None:
    own = worker_registry(5, (0.05, 0.5))
    other = generate_latest(worker_registry(3, (2.0,))).decode()
    text = scrape(own, {1: other})
    families = list(text_string_to_metric_families(text))
    assert families, "nothing served"
    for family in families:
        for sample in family.samples:
            assert sample.labels.get("worker") in ("0", "1"), sample
    values = samples_of(text)
    assert values[("pgw_logins_total", "0")] == 5.0
    assert values[("pgw_logins_total", "1")] == 3.0
    assert values[("pgw_sessions", "0")] == 5.0
    assert values[("pgw_sessions", "1")] == 3.0
    assert values[("pgw_query_seconds_count", "0")] == 2.0
    assert values[("pgw_query_seconds_count", "1")] == 1.0
    assert values[("pgw_query_seconds_sum", "1")] == 2.0


def test_the_merged_metrics_keep_each_family_together_with_its_type() -> None:
    own = worker_registry(5, (0.05,))
    text = scrape(own, {1: generate_latest(worker_registry(3, (2.0,))).decode()})
    types = {
        family.name: family.type
        for family in text_string_to_metric_families(text)
        if family.name in ("pgw_logins", "pgw_query_seconds")
    }
    assert types == {"pgw_logins": "counter", "pgw_query_seconds": "histogram"}
    # Both workers' samples of a family sit under its one # TYPE line, not in a second block.
    logins = text.split("# TYPE pgw_logins_total counter\n", 1)[1].split("# ", 1)[0]
    assert 'worker="0"' in logins
    assert 'worker="1"' in logins


def test_the_merged_metrics_have_one_type_line_per_family() -> None:
    # The primary's own registry and a worker's text snapshot name some series differently:
    # collected live, a Counter's `_created` series (and an Info's `_info`) sit inside the
    # family `pgw_logins`; in text format 0.0.4 they are families of their own (`# TYPE
    # pgw_logins_created gauge`). Merged by family name as they come, `pgw_logins_created`
    # (and `pgw_build_info`) would get a second # HELP/# TYPE block, with the samples of one
    # metric split in two groups: invalid exposition text. (The first version of
    # proxy/workers/metrics.py did exactly that; it now sends its own registry through the text
    # format too.)
    own = worker_registry(5, (0.05,))
    text = scrape(own, {1: generate_latest(worker_registry(3, (2.0,))).decode()})
    type_lines = Tally(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))
    assert type_lines, "no # TYPE line at all"
    repeated = {name: n for name, n in type_lines.items() if n != 1}
    assert repeated == {}, f"# TYPE written more than once: {repeated}\n{text}"


def test_a_snapshot_that_does_not_parse_is_skipped_and_the_rest_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    own = worker_registry(5, ())
    good = generate_latest(worker_registry(3, ())).decode()
    with caplog.at_level(logging.ERROR, logger="proxy.workers.metrics"):
        text = scrape(own, {1: good, 2: "this is { not prometheus text\n"})
    workers = {
        sample.labels["worker"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert workers == {"0", "1"}
    assert samples_of(text)[("pgw_logins_total", "1")] == 3.0
    assert "worker 2 sent metrics that do not parse" in caplog.text


def test_each_scrape_reads_the_latest_snapshots() -> None:
    own = worker_registry(1, ())
    snapshots: dict[int, str] = {}
    merged = CollectorRegistry(auto_describe=False)
    merged.register(WorkerMetrics(own, lambda: snapshots))
    assert ("pgw_logins_total", "1") not in samples_of(generate_latest(merged).decode())
    snapshots[1] = generate_latest(worker_registry(7, ())).decode()
    assert samples_of(generate_latest(merged).decode())[("pgw_logins_total", "1")] == 7.0
    del snapshots[1]  # the worker died: it drops out
    assert ("pgw_logins_total", "1") not in samples_of(generate_latest(merged).decode())
