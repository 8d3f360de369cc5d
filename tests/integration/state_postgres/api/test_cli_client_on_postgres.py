"""tests/unit/commands/test_cli_client.py's tests that talk to the API, on a PostgreSQL state
store (conftest.py)."""

from tests.unit.commands.test_cli_client import (
    test_json_errors_and_exit_codes,
    test_psql_gets_the_credential_in_its_environment_never_its_arguments,
    test_request_approve_credentials_as_people_see_them,
    test_requests_show_and_the_other_actions,
    test_sessions_and_kill,
    test_wait_polls_until_the_decision,
)

__all__ = [
    "test_json_errors_and_exit_codes",
    "test_psql_gets_the_credential_in_its_environment_never_its_arguments",
    "test_request_approve_credentials_as_people_see_them",
    "test_requests_show_and_the_other_actions",
    "test_sessions_and_kill",
    "test_wait_polls_until_the_decision",
]
