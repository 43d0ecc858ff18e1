"""Fixtures of component tests: a shared mechanism with real PostgreSQL, without Kafka.

Each test gets a database of its own on the server `./crm test` starts (CRM_PG_DSN_BASE), dropped
afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from interaction_service.worker import PROJECTION as INTERACTION
from tests.component.pools import migrated_pool


@pytest.fixture
async def fresh_dsn() -> AsyncIterator[str]:
    """The DSN of a database no one has used; whoever connects first creates it (open_pool)."""
    base = os.environ.get("CRM_PG_DSN_BASE")
    if not base:
        pytest.fail("component tests need PostgreSQL: run them with ./crm test")
    name = f"crm_component_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(f"{base}/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def interaction_pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh database with the interaction service's migrations."""
    async with migrated_pool(fresh_dsn, INTERACTION.migrations) as pool:
        yield pool
