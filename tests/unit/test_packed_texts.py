"""A batch's columns as sent: texts packed into one string each (the separator and the null mark
are characters no value holds, n values give n separators, an empty column packs to nothing),
times as microseconds, other types as they are."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crm_shared.runtime.packed import UnnestColumns, pack_texts


def test_columns_are_joined_after_a_leading_separator_with_none_as_the_null_mark() -> None:
    assert pack_texts(["a", "b"], ["c", None], []) == [
        "\x1fa\x1fb",
        "\x1fc\x1f\x1e",
        "",
        "\x1f",
        "\x1e",
    ]


def test_a_lone_empty_string_is_one_field() -> None:
    assert pack_texts([""]) == ["\x1f", "\x1f", "\x1e"]


def test_characters_held_by_a_value_are_not_chosen() -> None:
    values = ["a\x1fb", "\x01\x02", None, "c\x1ed"]
    *packed, separator, null_mark = pack_texts(values, ["plain"])
    assert separator != null_mark
    for value in values:
        assert value is None or (separator not in value and null_mark not in value)
    assert packed[0].count(separator) == len(values)
    assert packed[0].count(null_mark) == 1


def test_a_batch_holding_the_usual_and_the_next_characters_still_packs() -> None:
    crowded = [chr(code) for code in range(1, 300)]
    *_, separator, null_mark = pack_texts(crowded)
    assert {separator, null_mark}.isdisjoint(crowded)
    assert len({separator, null_mark}) == 2


def test_columns_are_text_unless_typed_and_a_type_for_no_column_is_refused() -> None:
    rows = UnnestColumns.named(("id", "at", "n"), at="timestamptz", n="int")
    assert rows.columns == (("id", "text"), ("at", "timestamptz"), ("n", "int"))
    with pytest.raises(ValueError, match="nmae"):
        UnnestColumns.named(("id", "name"), nmae="text")


def test_times_go_as_microseconds_and_texts_packed_with_their_characters_last() -> None:
    rows = UnnestColumns.named(("id", "at", "n"), at="timestamptz", n="int")
    at = datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)
    assert rows.arguments([["a", "b"], [at, None], [1, 2]]) == [
        "\x1fa\x1fb",
        [1_000_005, None],
        [1, 2],
        "\x1f",
        "\x1e",
    ]
    assert "(string_to_array($1, $4, $5))[2:]" in rows.select
    assert "$2::bigint[]" in rows.select and "$3::int[]" in rows.select


def test_without_text_columns_no_separator_is_bound() -> None:
    rows = UnnestColumns.named(("n",), n="int")
    assert rows.arguments([[1]]) == [[1]]
    assert rows.select == "SELECT n FROM unnest($1::int[]) AS u(n)"
