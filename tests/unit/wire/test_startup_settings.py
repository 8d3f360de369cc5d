"""Reading the settings a StartupMessage asks for, `options` included, as PostgreSQL does."""

from __future__ import annotations

import pytest

from proxy.wire import InvalidStartupOptions, StartupMessage, startup_settings
from proxy.wire.startup_settings import settings_from_options, split_options


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", []),
        ("   ", []),
        ("-c a=1", ["-c", "a=1"]),
        ("  -c\ta=1 \n --b=2  ", ["-c", "a=1", "--b=2"]),
        (r"-c search_path=a\ b", ["-c", "search_path=a b"]),
        (r"-c x=back\\slash", ["-c", r"x=back\slash"]),
        ("-c x=tail\\", ["-c", "x=tail"]),  # a lone trailing backslash is dropped
        ("-c x=\u00a0y", ["-c", "x=\u00a0y"]),  # only C-locale spaces separate words
    ],
)
def test_options_split_like_pg_split_opts(text: str, words: list[str]) -> None:
    assert split_options(text) == words


def test_every_form_of_a_setting() -> None:
    assert settings_from_options("-c a=1 -cb=2 --c-d=3 --e=x=y -c f=") == [
        ("a", "1"), ("b", "2"), ("c_d", "3"), ("e", "x=y"), ("f", ""),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-c", '"-c" in options needs a name=value after it'),
        ("-c novalue", '"novalue" in options is not name=value'),
        ("--=1", '"=1" in options is not name=value'),
        ("-F", 'unsupported switch "-F" in options'),
        ("-d 5", 'unsupported switch "-d" in options'),
        ("statement_timeout=1", 'unsupported switch "statement_timeout=1" in options'),
    ],
)
def test_anything_else_in_options_is_refused_with_42601(text: str, message: str) -> None:
    with pytest.raises(InvalidStartupOptions) as caught:
        settings_from_options(text)
    assert caught.value.sqlstate == "42601"
    assert message in caught.value.message


def startup(*pairs: tuple[str, str]) -> StartupMessage:
    return StartupMessage((("user", "alice"), ("database", "orders"), *pairs))


def test_ordinary_parameters_win_over_options_and_names_fold_to_lowercase() -> None:
    settings = startup_settings(
        startup(("options", "-c Statement_Timeout=1s -c work_mem=2MB"),
                ("statement_timeout", "5s"), ("DateStyle", "ISO"))
    )  # fmt: skip
    assert settings == (("statement_timeout", "5s"), ("work_mem", "2MB"), ("datestyle", "ISO"))


def test_login_names_and_options_themselves_are_not_settings() -> None:
    assert startup_settings(startup(("options", ""), ("application_name", "a"))) == (
        ("application_name", "a"),
    )


def test_only_ascii_letters_are_folded() -> None:
    (name, _value), = startup_settings(startup(("ROL\u0130", "x")))  # fmt: skip
    assert name == "rol\u0130"
