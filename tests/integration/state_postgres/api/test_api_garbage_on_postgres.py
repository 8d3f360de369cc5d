"""tests/unit/api/test_api_garbage.py's tests whose input reaches the store (odd ids, query
parameters, fields of requests that are made, paths a token is looked up for), on a PostgreSQL
state store (conftest.py). The body-framing tests (bodies that are not JSON, too big, chunked,
never sent) are refused before any store is read, and run on SQLite only."""

from tests.unit.api.test_api_garbage import (
    test_bad_query_parameters_are_400,
    test_each_action_checks_its_own_fields,
    test_no_spelling_of_a_path_reaches_the_api_without_a_token,
    test_odd_ids_are_just_not_found,
    test_unknown_paths_and_methods_answer_in_json,
    test_wrong_types_and_missing_fields_are_named,
)

__all__ = [
    "test_bad_query_parameters_are_400",
    "test_each_action_checks_its_own_fields",
    "test_no_spelling_of_a_path_reaches_the_api_without_a_token",
    "test_odd_ids_are_just_not_found",
    "test_unknown_paths_and_methods_answer_in_json",
    "test_wrong_types_and_missing_fields_are_named",
]
