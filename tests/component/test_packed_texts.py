"""`unpacked` on a real PostgreSQL gives back exactly the columns `pack_texts` packed: empty
strings, NULLs, the separator characters themselves and any Unicode, alone or in a batch."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from crm_shared.runtime.db import apply_migrations, ensure_database
from crm_shared.runtime.packed import Column, UnnestColumns, pack_texts, unpacked

pytestmark = pytest.mark.component

COLUMNS: list[Column] = [
    [],
    [""],
    [None],
    ["", ""],
    ["", None, "a", None, ""],
    ["a\x1fb", "\x1e", "\x1f\x1e", None, "plain"],
    ["émile", "東京", "😀", "tab\tand\nnewline", "\\", '"quoted"', "{braces}", "NULL"],
    [chr(code) for code in range(1, 400)],
    ["x" * 10_000, None, "y"],
]


@pytest.fixture
async def conn(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a database with the shared migrations only."""
    await ensure_database(fresh_dsn)
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await apply_migrations(conn)
        yield conn
    finally:
        await conn.close()


@pytest.mark.parametrize("column", COLUMNS, ids=range(len(COLUMNS)))
async def test_one_column_comes_back_as_it_went(conn: asyncpg.Connection, column: Column) -> None:
    assert await conn.fetchval(f"SELECT {unpacked(1, 2)}", *pack_texts(column)) == column


async def test_columns_packed_together_unnest_into_their_rows(conn: asyncpg.Connection) -> None:
    names = ["a\x1fb", "", None, "d"]
    codes = ["1", None, "\x1e", ""]
    rows = await conn.fetch(
        f"SELECT * FROM unnest({unpacked(1, 3)}, {unpacked(2, 3)}, $5::int[])"
        " WITH ORDINALITY AS r(name, code, n, position) ORDER BY position",
        *pack_texts(names, codes),
        [1, 2, 3, 4],
    )
    assert [(row["name"], row["code"], row["n"]) for row in rows] == list(
        zip(names, codes, [1, 2, 3, 4], strict=True)
    )


ROWS = UnnestColumns.named(
    ("id", "name", "price", "data", "at", "n"),
    price="numeric",
    data="jsonb",
    at="timestamptz",
    n="int",
)


async def test_rows_of_every_kind_of_column_are_written_exactly(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "CREATE TABLE t (id text, name text, price numeric, data jsonb, at timestamptz, n int)"
    )
    first, last = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, UTC)
    rows = [
        ("a", "x\x1fy", Decimal("12.3400"), '{"k": [1, "\\u001f"]}', first, 1),
        ("b", None, None, None, None, None),
        ("c", "", Decimal("-0.000001"), "[]", last, -7),
        ("d", "é", Decimal(10) ** 30, "{}", datetime(2026, 12, 1, 21, 0, 0, 123457, UTC), 0),
        ("e", "1969", Decimal(0), "null", datetime(1969, 12, 31, 23, 59, 59, 999999, UTC), 2),
    ]
    await conn.execute(
        f"INSERT INTO t ({ROWS.names}) {ROWS.select}",
        *ROWS.arguments(list(zip(*rows, strict=True))),
    )
    stored = await conn.fetch("SELECT id, name, price, data::text, at, n FROM t ORDER BY id")
    assert [(*row[:3], _json(row[3]), *row[4:]) for row in stored] == [
        (*row[:3], _json(row[3]), *row[4:]) for row in rows
    ]


def _json(text: str | None) -> object:
    return None if text is None else json.loads(text)
