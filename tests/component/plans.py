"""Query plans as text, for tests that check how PostgreSQL runs a statement."""

from __future__ import annotations

from typing import Any

import asyncpg


async def explained(executor: asyncpg.Connection | asyncpg.Pool, statement: str, *args: Any) -> str:
    """The plan PostgreSQL makes for `statement` with these arguments (`EXPLAIN`), one line a
    node; `EXECUTE name(...)` gives a prepared statement's plan."""
    return "\n".join(row[0] for row in await executor.fetch(f"EXPLAIN {statement}", *args))
