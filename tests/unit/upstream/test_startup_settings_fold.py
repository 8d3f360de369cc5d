"""Setting names compare as PostgreSQL compares them: ASCII letters folded, nothing else."""

from hypothesis import given
from hypothesis import strategies as st

from proxy.upstream.startup_settings import fold


def folded_one_by_one(name: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in name)


@given(st.text())
def test_only_ascii_letters_are_folded(name: str) -> None:
    assert fold(name) == folded_one_by_one(name)


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_names_fold_as_postgres_folds_them(name: str) -> None:
    assert fold(name) == folded_one_by_one(name)


def test_non_ascii_capitals_stay_as_they_are() -> None:
    assert fold("ROL\u0130") == "rol\u0130"
    assert fold("Stra\u00dfe") == "stra\u00dfe"
