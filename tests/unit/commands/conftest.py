"""The API harness's fixtures (tests/fixtures/api.py) for this folder's tests."""

from tests.fixtures.api import api, as_user, policy, receiver

__all__ = ["api", "as_user", "policy", "receiver"]
