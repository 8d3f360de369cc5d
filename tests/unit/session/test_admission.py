"""Connection caps per stage and per source (SECURITY.md rows 33 and 36)."""

from __future__ import annotations

import pytest

from proxy.session.admission import Admission, AdmissionLimits, Stage

LIMITS = AdmissionLimits(
    max_preauth=3, max_preauth_per_source=2, max_sessions=4, max_sessions_per_source=3
)


def test_a_source_cannot_take_more_preauth_slots_than_its_cap() -> None:
    admission = Admission(LIMITS)
    assert admission.try_acquire(Stage.PREAUTH, "a")
    assert admission.try_acquire(Stage.PREAUTH, "a")
    assert not admission.try_acquire(Stage.PREAUTH, "a")
    assert admission.try_acquire(Stage.PREAUTH, "b")


def test_the_global_cap_holds_across_sources() -> None:
    admission = Admission(LIMITS)
    for source in "abc":
        assert admission.try_acquire(Stage.PREAUTH, source)
    assert not admission.try_acquire(Stage.PREAUTH, "d")
    admission.release(Stage.PREAUTH, "b")
    assert admission.try_acquire(Stage.PREAUTH, "d")


def test_live_sessions_do_not_use_preauth_slots() -> None:
    admission = Admission(LIMITS)
    for _ in range(3):
        assert admission.try_acquire(Stage.LIVE, "a")
    assert admission.try_acquire(Stage.PREAUTH, "a")
    assert not admission.try_acquire(Stage.LIVE, "a")


def test_releasing_everything_returns_to_empty_state() -> None:
    admission = Admission(LIMITS)
    for i in range(1000):
        source = f"10.0.0.{i % 7}"
        if admission.try_acquire(Stage.PREAUTH, source):
            admission.release(Stage.PREAUTH, source)
    assert admission.count(Stage.PREAUTH) == 0
    assert admission._by_source[Stage.PREAUTH] == {}


def test_releasing_a_slot_never_taken_is_a_bug_not_a_silent_negative() -> None:
    admission = Admission(LIMITS)
    with pytest.raises(RuntimeError, match="did not hold"):
        admission.release(Stage.LIVE, "a")
