"""A migrated pool on a component test's database, for fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from crm_shared.runtime.db import open_pool


@asynccontextmanager
async def migrated_pool(dsn: str, migrations: Path, size: int = 2) -> AsyncIterator[asyncpg.Pool]:
    """A pool on `dsn` with `migrations` applied, closed afterwards."""
    pool = await open_pool(dsn, migrations, size)
    try:
        yield pool
    finally:
        await pool.close()
