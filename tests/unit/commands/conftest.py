"""The API harness's fixtures (tests/fixtures/api.py) for this folder's tests."""

from tests.fixtures.api import api, policy, receiver

__all__ = ["api", "policy", "receiver"]
