"""Connection caps per stage and per source (SECURITY.md rows 33 and 36), and what a refused
connection is told."""

from __future__ import annotations

import pytest

from proxy.config import DEFAULT_MAX_PREAUTH_CONNECTIONS, DEFAULT_MAX_PREAUTH_PER_SOURCE
from proxy.session.admission import Admission, AdmissionLimits, Cap, Refusal, Stage

LIMITS = AdmissionLimits(
    max_preauth=3, max_preauth_per_source=2, max_sessions=4, max_sessions_per_source=3,
    max_refusing=2, max_refusing_per_source=1,
)  # fmt: skip


def test_a_source_cannot_take_more_preauth_slots_than_its_cap() -> None:
    admission = Admission(LIMITS)
    assert admission.admit(Stage.PREAUTH, "a") is None
    assert admission.admit(Stage.PREAUTH, "a") is None
    assert admission.admit(Stage.PREAUTH, "a") == Refusal(Cap.PREAUTH_PER_SOURCE, 2)
    assert admission.admit(Stage.PREAUTH, "b") is None


def test_the_global_cap_holds_across_sources() -> None:
    admission = Admission(LIMITS)
    for source in "abc":
        assert admission.admit(Stage.PREAUTH, source) is None
    assert admission.admit(Stage.PREAUTH, "d") == Refusal(Cap.PREAUTH, 3)
    admission.release(Stage.PREAUTH, "b")
    assert admission.admit(Stage.PREAUTH, "d") is None


def test_live_sessions_do_not_use_preauth_slots() -> None:
    admission = Admission(LIMITS)
    for _ in range(3):
        assert admission.admit(Stage.LIVE, "a") is None
    assert admission.admit(Stage.PREAUTH, "a") is None
    assert admission.admit(Stage.LIVE, "a") == Refusal(Cap.SESSIONS_PER_SOURCE, 3)


def test_refusals_in_progress_have_caps_of_their_own() -> None:
    admission = Admission(LIMITS)
    assert admission.admit(Stage.REFUSING, "a") is None
    assert admission.admit(Stage.REFUSING, "a") == Refusal(Cap.REFUSING_PER_SOURCE, 1)
    assert admission.admit(Stage.REFUSING, "b") is None
    assert admission.admit(Stage.REFUSING, "c") == Refusal(Cap.REFUSING, 2)
    assert admission.count(Stage.PREAUTH) == 0


MESSAGES = [
    (Cap.PREAUTH_PER_SOURCE, 250, "pgwarden: too many connections from 10.0.0.7 (limit 250)"),
    (Cap.PREAUTH, 500, "pgwarden: too many connections (limit 500)"),
    (Cap.SESSIONS_PER_SOURCE, 250, "pgwarden: too many sessions from 10.0.0.7 (limit 250)"),
    (Cap.SESSIONS, 1000, "pgwarden: too many sessions (limit 1000)"),
]


@pytest.mark.parametrize(("cap", "limit", "message"), MESSAGES)
def test_a_refused_client_is_told_which_cap_and_its_value(
    cap: Cap, limit: int, message: str
) -> None:
    assert Refusal(cap, limit).message("10.0.0.7") == message


def test_the_defaults_let_200_concurrent_logins_from_one_address_in() -> None:
    admission = Admission(AdmissionLimits())
    for _ in range(200):
        assert admission.admit(Stage.PREAUTH, "10.0.0.7") is None
        assert admission.admit(Stage.LIVE, "10.0.0.7") is None
    assert DEFAULT_MAX_PREAUTH_PER_SOURCE < DEFAULT_MAX_PREAUTH_CONNECTIONS  # still bounded


def test_releasing_everything_returns_to_empty_state() -> None:
    admission = Admission(LIMITS)
    for i in range(1000):
        source = f"10.0.0.{i % 7}"
        if admission.admit(Stage.PREAUTH, source) is None:
            admission.release(Stage.PREAUTH, source)
    assert admission.count(Stage.PREAUTH) == 0
    assert admission._by_source[Stage.PREAUTH] == {}


def test_releasing_a_slot_never_taken_is_a_bug_not_a_silent_negative() -> None:
    admission = Admission(LIMITS)
    with pytest.raises(RuntimeError, match="did not hold"):
        admission.release(Stage.LIVE, "a")
