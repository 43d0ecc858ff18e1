"""Query plans as text, for tests that check how PostgreSQL runs a statement."""

from __future__ import annotations

from typing import Any

import asyncpg


async def explained(executor: asyncpg.Connection | asyncpg.Pool, statement: str, *args: Any) -> str:
    """The plan PostgreSQL makes for `statement` with these arguments (`EXPLAIN`), one line a
    node; `EXECUTE name(...)` gives a prepared statement's plan."""
    return "\n".join(row[0] for row in await executor.fetch(f"EXPLAIN {statement}", *args))


async def plans_made(conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
    """Each statement prepared on the connection: the generic and custom plans PostgreSQL has
    made for it so far (pg_prepared_statements)."""
    rows = await conn.fetch(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
    )
    return {
        r["statement"]: (r["generic_plans"], r["custom_plans"])
        for r in rows
        if "pg_prepared_statements" not in r["statement"]  # this statement's own
    }


def plans_between(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], reading: str
) -> list[tuple[int, int]]:
    """The generic and custom plans made between two plans_made, for each statement that names
    `reading` (a table) and was run in between; asyncpg's own statements (its look-ups of row
    types) name none of ours."""
    return [
        (made[0] - before.get(statement, (0, 0))[0], made[1] - before.get(statement, (0, 0))[1])
        for statement, made in after.items()
        if made != before.get(statement) and reading in statement
    ]
