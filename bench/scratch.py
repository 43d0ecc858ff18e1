"""Scratch databases of the benchmarks: each run starts from an empty, migrated database."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from crm_shared.runtime.db import open_pool


async def drop_database(dsn_base: str, name: str) -> None:
    """Drop the database if a run left it, whoever is still connected."""
    admin = await asyncpg.connect(f"{dsn_base}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def fresh_pool(
    dsn_base: str, name: str, migrations: Path, size: int, *, reset_sessions: bool = True
) -> asyncpg.Pool:
    """A pool on database `name`, emptied and migrated first (`reset_sessions` as open_pool's)."""
    await drop_database(dsn_base, name)
    return await open_pool(f"{dsn_base}/{name}", migrations, size, reset_sessions=reset_sessions)
