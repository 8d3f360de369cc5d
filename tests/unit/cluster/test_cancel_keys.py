"""The replica slot in cancel keys (proxy/session/registry.py): where it is, and what it costs."""

from __future__ import annotations

import pytest

from proxy.session.registry import SLOT_BITS, SessionRegistry
from proxy.session.session import Session

SHIFT = 32 - SLOT_BITS


@pytest.mark.parametrize(("worker", "workers"), [(0, 1), (1, 2), (5, 8), (63, 64)])
@pytest.mark.parametrize("slot", [0, 1, 37, 63])
def test_a_key_names_its_replica_slot_and_its_worker(worker: int, workers: int, slot: int) -> None:
    registry: SessionRegistry[Session] = SessionRegistry(worker, workers, slot)
    for pid in range(50):
        secret = registry.new_cancel_key(pid)
        assert int.from_bytes(secret, "big") >> SHIFT == slot
        assert registry.replica_slot(secret) == slot
        assert registry.owner(secret) == worker


def test_a_replica_reads_the_slot_of_another_replicas_key() -> None:
    here: SessionRegistry[Session] = SessionRegistry(0, 1, 2)
    there: SessionRegistry[Session] = SessionRegistry(1, 4, 5)  # other workers, other bits
    assert here.replica_slot(there.new_cancel_key(7)) == 5


def test_the_rest_of_the_key_stays_random() -> None:
    registry: SessionRegistry[Session] = SessionRegistry(0, 1, 9)
    keys = {registry.new_cancel_key(1) for _ in range(200)}
    assert len(keys) == 200  # 26 random bits: 200 draws do not collide in practice
    assert len({int.from_bytes(k, "big") & 0xFF for k in keys}) > 100


def test_a_single_server_spends_no_bits_on_a_slot() -> None:
    registry: SessionRegistry[Session] = SessionRegistry()
    assert registry.replica_slot(registry.new_cancel_key(1)) is None
    tops = {registry.new_cancel_key(1)[0] >> 2 for _ in range(400)}
    assert len(tops) > 32  # the top bits are random too


def test_a_key_of_another_size_is_taken_as_ours_and_matches_nothing() -> None:
    registry: SessionRegistry[Session] = SessionRegistry(0, 1, 3)
    assert registry.replica_slot(b"\xff" * 8) == 3
    assert registry.find_by_cancel_key(1, b"\xff" * 8) is None


def test_a_slot_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="replica slot 64"):
        SessionRegistry(0, 1, 64)
