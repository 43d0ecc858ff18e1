"""Text columns packed into one string each: the separator and the null mark are characters no
value holds, n values give n separators, and an empty column packs to nothing."""

from __future__ import annotations

from crm_shared.runtime.packed import pack_texts


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
