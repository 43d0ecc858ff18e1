"""Processes of one service start together (worker and API under their supervisors): their
migrations must not race, however many open the same fresh database at once."""

from __future__ import annotations

import asyncio

import pytest

from crm_shared.runtime.db import open_pool
from profile_service.config import MIGRATIONS

pytestmark = pytest.mark.component


async def test_many_processes_migrating_one_fresh_database_at_once_all_succeed(
    fresh_dsn: str,
) -> None:
    pools = await asyncio.gather(*(open_pool(fresh_dsn, MIGRATIONS, 1) for _ in range(8)))
    try:
        async with pools[0].acquire() as conn:
            names = [row["name"] for row in await conn.fetch("SELECT name FROM schema_migrations")]
        assert len(names) == len(set(names)) > 3
    finally:
        await asyncio.gather(*(pool.close() for pool in pools))
