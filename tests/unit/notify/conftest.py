"""The grant service's fixtures (tests/fixtures/grants.py) for the outbox's tests; the webhook
tests take the API harness's (tests/fixtures/api.py) in their own module."""

from tests.fixtures.grants import db_path, policy, store_factory

__all__ = ["db_path", "policy", "store_factory"]
