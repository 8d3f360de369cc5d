"""The strict YAML loader: safe, no aliases or tags, no duplicate keys, no 1.1 surprises."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from proxy.policy.yaml_strict import (
    MAX_DOCUMENT_BYTES,
    MAX_NESTING_DEPTH,
    YamlError,
    YamlMap,
    load_yaml,
    read_document,
)
from tests.fixtures.policy_samples import BILLION_LAUGHS


def error_of(text: str) -> str:
    with pytest.raises(YamlError) as caught:
        load_yaml(text, "test.yaml")
    assert len(caught.value.problems) == 1
    return str(caught.value.problems[0])


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("a: 2026-01-01", "2026-01-01"),  # no silent dates: the schema decides
        ("a: 2026-01-01 10:00:00", "2026-01-01 10:00:00"),
        ("a: 2026-01-01T10:00:00Z", "2026-01-01T10:00:00Z"),
        ("a: yes", "yes"),  # YAML 1.1 booleans are text
        ("a: off", "off"),
        ("a: 0755", "0755"),  # not octal 493
        ("a: 1:30", "1:30"),  # not sexagesimal 90
        ("a: 0x1F", "0x1F"),
        ("a: 1_000", "1_000"),
        ("a: =", "="),
        ("a: true", True),
        ("a: False", False),
        ("a: 5432", 5432),
        ("a: -3", -3),
        ("a: 1.5", 1.5),
        ("a: ~", None),
        ("a:", None),
        ("a: '5432'", "5432"),
        ("<<: {b: 1}", {"b": 1}),  # no merge keys: "<<" is an ordinary (and unknown) key
    ],
)
def test_scalars_follow_the_yaml_1_2_core_schema(text: str, value: object) -> None:
    loaded = load_yaml(text)
    assert isinstance(loaded, dict)
    assert list(loaded.values()) == [value]


def test_duplicate_keys_are_an_error_with_both_lines() -> None:
    assert error_of("a: 1\nb: 2\na: 3\n") == (
        "line 3, column 1: duplicate key 'a' (first defined on line 1)"
    )


def test_duplicate_keys_in_a_nested_flow_mapping_are_found_too() -> None:
    assert "duplicate key 'x'" in error_of("outer:\n  inner: {x: 1, y: 2, x: 3}\n")


@pytest.mark.parametrize(
    "text",
    ["a: &anchor 1\n", "a: &x 1\nb: *x\n", "a: *undefined\n", "base: &b {x: 1}\nc: {<<: *b}\n"],
)
def test_anchors_and_aliases_are_refused(text: str) -> None:
    assert "YAML anchors and aliases are not allowed" in error_of(text)


def test_the_billion_laughs_document_is_refused_fast() -> None:
    started = time.perf_counter()
    assert "YAML anchors and aliases are not allowed" in error_of(BILLION_LAUGHS)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    "text",
    [
        "a: !!timestamp 2026-01-01",
        "a: !!binary aGk=",
        "a: !!python/object:os.system {}",
        "a: !!set {x}",
        "a: !custom x",
        "a: !!str 5",
    ],
)
def test_explicit_tags_are_refused(text: str) -> None:
    assert "YAML tags are not allowed" in error_of(text)


def test_a_syntax_error_has_line_and_column() -> None:
    assert error_of("a: 1\nb: [1, 2\n").startswith("line 3, column 1: expected ',' or ']'")


def test_more_than_one_document_is_an_error() -> None:
    assert "expected a single document" in error_of("a: 1\n---\nb: 2\n")


def test_control_characters_are_refused_with_their_line() -> None:
    assert error_of("a: 1\nb: \x1b[31m\n") == "line 2: character U+001B is not allowed in YAML"


def test_a_complex_key_is_refused() -> None:
    assert "a mapping key must be a scalar" in error_of("? [a, b]\n: 1\n")


def test_nesting_is_capped() -> None:
    assert f"nested deeper than {MAX_NESTING_DEPTH}" in error_of("[" * 1000 + "]" * 1000)
    assert load_yaml("[" * (MAX_NESTING_DEPTH - 1) + "]" * (MAX_NESTING_DEPTH - 1)) is not None


def test_a_document_above_the_size_cap_is_refused_before_parsing() -> None:
    huge = "a: [" + "1, " * (MAX_DOCUMENT_BYTES // 3) + "1]"
    started = time.perf_counter()
    assert "larger than the limit" in error_of(huge)
    assert time.perf_counter() - started < 0.5


def test_the_size_cap_counts_utf8_bytes() -> None:
    text = "a: " + "é" * (MAX_DOCUMENT_BYTES // 2)  # under the cap in characters, over in bytes
    assert "larger than the limit" in error_of(text)


def test_mappings_remember_the_line_of_each_key() -> None:
    loaded = load_yaml("top:\n  first: 1\n\n  second: {x: 2}\n")
    assert isinstance(loaded, YamlMap)
    inner = loaded["top"]
    assert isinstance(inner, YamlMap)
    assert inner.key_lines == {"first": 2, "second": 4}
    assert loaded.key_lines == {"top": 1}


def test_an_empty_document_is_none() -> None:
    assert load_yaml("") is None
    assert load_yaml("# only a comment\n") is None


def test_read_document_never_reads_past_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_DOCUMENT_BYTES + 1))
    with pytest.raises(YamlError, match="larger than the limit"):
        read_document(path)


def test_read_document_refuses_invalid_utf8_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(YamlError) as caught:
        read_document(path)
    assert str(caught.value.problems[0]) == "line 2: the file is not valid UTF-8"


def test_read_document_raises_oserror_for_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_document(tmp_path / "missing.yaml")
