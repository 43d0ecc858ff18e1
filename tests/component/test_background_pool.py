"""A background pool's database work runs at a lower CPU priority than the fold's (the database
of `./crm test` runs on this machine)."""

from __future__ import annotations

import os

import pytest

from crm_shared.runtime.db import BACKGROUND_NICENESS, open_pool
from profile_service.config import MIGRATIONS

pytestmark = pytest.mark.component


async def test_only_a_background_pools_server_processes_run_at_the_background_niceness(
    fresh_dsn: str,
) -> None:
    ordinary = await open_pool(fresh_dsn, MIGRATIONS, 2)
    background = await open_pool(fresh_dsn, MIGRATIONS, 2, background=True)
    try:
        async with ordinary.acquire() as fold, background.acquire() as job:
            fold_priority = os.getpriority(os.PRIO_PROCESS, fold.get_server_pid())
            job_priority = os.getpriority(os.PRIO_PROCESS, job.get_server_pid())
        assert job_priority == BACKGROUND_NICENESS
        assert fold_priority < BACKGROUND_NICENESS
    finally:
        await ordinary.close()
        await background.close()
