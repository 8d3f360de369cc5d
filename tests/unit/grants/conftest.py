"""The grant service's fixtures (tests/fixtures/grants.py) for this folder's tests."""

from tests.fixtures.grants import db_path, policy, service, store, store_factory

__all__ = ["db_path", "policy", "service", "store", "store_factory"]
