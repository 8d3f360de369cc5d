"""tests/unit/commands/test_cli_overview.py's tests that talk to the API, on a PostgreSQL state
store (conftest.py)."""

from tests.unit.commands.test_cli_overview import (
    test_request_with_a_misspelt_name_suggests_the_right_one,
    test_status_shows_grants_with_time_left_and_pending_requests,
    test_status_with_nothing_says_what_to_do,
    test_targets_as_a_table,
    test_targets_json_is_the_servers,
)

__all__ = [
    "test_request_with_a_misspelt_name_suggests_the_right_one",
    "test_status_shows_grants_with_time_left_and_pending_requests",
    "test_status_with_nothing_says_what_to_do",
    "test_targets_as_a_table",
    "test_targets_json_is_the_servers",
]
