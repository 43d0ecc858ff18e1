"""A batch's columns sent to PostgreSQL cheaply, for the folds' set-based statements.

asyncpg encodes an array argument element by element: it checks every element against the
abstract base classes (is it itself an array?), 0.4 µs a text, and converts a timestamptz in
Python, 1.15 µs. In a fold that unnests thousands of ids, codes and times a batch, that was a
fifth of the worker's CPU (docs/decisions.md, "Batches sent as packed texts and microseconds").
Here a text column travels as one joined string, which PostgreSQL splits back (`unpacked`, an
expression the planner folds like any other) for about what decoding the array costs it, and a
time as bigint microseconds.

    ROWS = UnnestColumns.named(("id", "name", "at"), at="timestamptz")
    await conn.execute(f"INSERT INTO t ({ROWS.names}) {ROWS.select}", *ROWS.arguments(columns))

A lookup by ids joins the unpacked ids, `FROM unnest({unpacked(1, 2)}) AS w(id) JOIN t USING (id)`:
never `id = ANY({unpacked(1, 2)})`. In a generic plan that expression is no parameter, and a
plan that scans the table splits the whole string again for every row (the broadcast's consent
lock took 777 ms a statement so: docs/decisions.md).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

Column = Sequence[str | None]

_USUAL_SEPARATOR = "\x1f"
_USUAL_NULL_MARK = "\x1e"


def pack_texts(*columns: Column) -> list[str]:
    """Each column packed for `unpacked`, then the separator and the null mark, in that order:
    the statement's arguments."""
    packed = _packed(columns, _USUAL_SEPARATOR, _USUAL_NULL_MARK)
    if packed is None:
        separator, null_mark = _unused_characters(columns)
        packed = _packed(columns, separator, null_mark)
        assert packed is not None, "the characters chosen are in no value"
    return packed


def unpacked(parameter: int, separator: int) -> str:
    """SQL: the text[] packed in the parameter $parameter, whose separator and null mark are the
    parameters $separator and $separator + 1. An expression, not a SQL function: with a custom
    plan the planner folds the parameters' values into constants, and a function would be run
    through the SQL-function executor for each column of each statement."""
    return f"(string_to_array(${parameter}, ${separator}, ${separator + 1}))[2:]"


TEXT_INPUT_TYPES = frozenset({"text", "numeric", "jsonb"})
"""Types that travel as packed text, cast once unpacked: jsonb as JSON strings, numeric as
numbers (Decimal, int) turned into text here (PostgreSQL parses money for less than asyncpg's
binary numeric encoding costs)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FROM_MICROS = (
    "timestamptz 'epoch' + ({name} / 1000000) * interval '1 second'"
    " + ({name} % 1000000) * interval '1 microsecond' AS {name}"
)
"""Whole seconds, then the microseconds: an interval is multiplied by a float, exact for either
part over the whole range of a Python datetime, not for the microseconds of years past 2255."""


@dataclass(frozen=True)
class UnnestColumns:
    """A batch of rows sent as one argument a column, for `INSERT ... SELECT`: texts packed, times
    as microseconds since the epoch (encoding a bigint and computing it costs Python 0.45 µs
    against 1.15 µs for a timestamptz, and PostgreSQL adds it to the epoch for less than it
    decodes a timestamp), other types as arrays. Each column is named and typed as the table's."""

    columns: tuple[tuple[str, str], ...]
    """(name, PostgreSQL type) of each column, in the order of `arguments`' columns."""

    @classmethod
    def named(cls, names: Sequence[str], **types: str) -> UnnestColumns:
        """Columns of these names, of type text unless given another."""
        unknown = set(types) - set(names)
        if unknown:
            raise ValueError(f"types given for no column: {sorted(unknown)}")
        return cls(tuple((name, types.get(name, "text")) for name in names))

    @functools.cached_property
    def names(self) -> str:
        return ", ".join(name for name, _ in self.columns)

    @functools.cached_property
    def select(self) -> str:
        """SQL: the rows, `SELECT <columns> FROM unnest(...)` on $1 to $n (one a column), then
        the separator and the null mark of the packed texts (when there are texts)."""
        separator = len(self.columns) + 1
        arrays, values = [], []
        for n, (name, kind) in enumerate(self.columns, start=1):
            if kind in TEXT_INPUT_TYPES:
                arrays.append(unpacked(n, separator))
                values.append(name if kind == "text" else f"{name}::{kind} AS {name}")
            elif kind == "timestamptz":
                arrays.append(f"${n}::bigint[]")
                values.append(_FROM_MICROS.format(name=name))
            else:
                arrays.append(f"${n}::{kind}[]")
                values.append(name)
        return f"SELECT {', '.join(values)} FROM unnest({', '.join(arrays)}) AS u({self.names})"

    def arguments(self, columns: Sequence[Sequence[Any]]) -> list[Any]:
        """What to bind for `select`: the batch's columns (in `columns`' order), converted."""
        kinds = [kind for _, kind in self.columns]
        texts = [
            _as_text(column) if kind == "numeric" else column
            for column, kind in zip(columns, kinds, strict=True)
            if kind in TEXT_INPUT_TYPES
        ]
        packed = iter(pack_texts(*texts) if texts else [])
        bound: list[Any] = []
        for column, kind in zip(columns, kinds, strict=True):
            if kind in TEXT_INPUT_TYPES:
                bound.append(next(packed))
            elif kind == "timestamptz":
                bound.append(_micros(column))
            else:
                bound.append(column)
        return [*bound, *packed]  # the separator and the null mark follow the columns


def _as_text(numbers: Sequence[object]) -> list[str | None]:
    return [None if number is None else str(number) for number in numbers]


def _micros(times: Sequence[datetime | None]) -> list[int | None]:
    """Aware times as whole microseconds since the epoch (exact, unlike a float timestamp)."""
    return [None if time is None else (time - _EPOCH) // _MICROSECOND for time in times]


def _packed(columns: Sequence[Column], separator: str, null_mark: str) -> list[str] | None:
    """The columns, then the two characters; None when a value holds either of them.

    A packed column starts with the separator, so that n values are n fields after the first
    (empty) one, which `unpacked` drops: a lone empty string is then one field, not none.
    """
    packed: list[str] = []
    for column in columns:
        if not column:
            packed.append("")
            continue
        try:
            text = separator + separator.join(column)  # type: ignore[arg-type]
            nulls = 0
        except TypeError:  # some values are None
            nulls = sum(value is None for value in column)
            text = separator + separator.join(
                null_mark if value is None else value for value in column
            )
        if text.count(separator) != len(column) or text.count(null_mark) != nulls:
            return None
        packed.append(text)
    return [*packed, separator, null_mark]


def _unused_characters(columns: Sequence[Column]) -> tuple[str, str]:
    """The first two characters that no value holds (PostgreSQL's text takes any but NUL, and
    UTF-8 has no surrogates): a batch of n characters leaves some of the first n + 2 free."""
    used = set().union(*(value for column in columns for value in column if value is not None))
    free: Iterator[str] = (
        character
        for character in map(chr, itertools.chain(range(1, 0xD800), range(0xE000, 0x110000)))
        if character not in used
    )
    return next(free), next(free)
