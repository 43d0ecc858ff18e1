"""A rebuild fills its shadow without the indexes only the API reads (Projection.
read_only_indexes) nor those of the applied ids (bulk.UNREAD_INDEXES, one of them a primary key)
and builds them after the replay: the shadow then has every index and constraint its migrations
give, defined as they define them; every projection's list names indexes that exist."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from crm_shared.ops import platform
from crm_shared.runtime import shadow
from crm_shared.runtime.bulk import UNREAD_INDEXES
from crm_shared.runtime.db import connect_in_schema, open_pool

pytestmark = pytest.mark.component

SHADOW = shadow.SHADOW_SCHEMA


async def _builder(dsn: str, migrations: Path) -> asyncpg.Connection:
    """A connection to the shadow schema of a database made for the test."""
    pool = await open_pool(dsn, migrations, 1)
    await pool.close()
    return await connect_in_schema(dsn, SHADOW)


async def _indexes(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1", SHADOW
    )
    return {row["indexname"]: row["indexdef"] for row in rows}


async def _constraints(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint"
        " WHERE connamespace = $1::regnamespace",
        SHADOW,
    )
    return {row["conname"]: row["definition"] for row in rows}


@pytest.mark.parametrize("service", platform.projections(), ids=lambda service: service.name)
async def test_the_read_only_indexes_are_built_again_as_the_migrations_define_them(
    fresh_dsn: str, service: platform.Service
) -> None:
    projection = service.load_projection()
    builder = await _builder(fresh_dsn, projection.migrations)
    try:
        await shadow.create_shadow(builder, SHADOW, projection.migrations)
        migrated = await _indexes(builder)
        keys = await _constraints(builder)
        names = (*projection.read_only_indexes, *UNREAD_INDEXES)
        deferred = await shadow.drop_indexes(builder, SHADOW, names)
        assert set(migrated) - set(await _indexes(builder)) == set(names)
        await shadow.make_durable(builder, SHADOW)
        await shadow.create_indexes(builder, deferred)
        assert await _indexes(builder) == migrated
        assert await _constraints(builder) == keys  # the applied ids' primary key is back
    finally:
        await builder.close()


async def test_an_index_the_migrations_do_not_make_is_refused(fresh_dsn: str) -> None:
    projection = platform.projections()[0].load_projection()
    builder = await _builder(fresh_dsn, projection.migrations)
    try:
        await shadow.create_shadow(builder, SHADOW, projection.migrations)
        with pytest.raises(ValueError, match="no index"):
            await shadow.drop_indexes(builder, SHADOW, ["no_such_index"])
    finally:
        await builder.close()


async def test_the_tables_are_listed_with_those_they_reference_and_made_logged_after_them(
    fresh_dsn: str,
) -> None:
    """One listing serves the comparison and `make_durable`: each table with the tables its
    foreign keys reference, which must turn logged first."""
    broadcast = next(s for s in platform.projections() if s.name == "broadcast")
    migrations = broadcast.load_projection().migrations
    builder = await _builder(fresh_dsn, migrations)
    try:
        await shadow.create_shadow(builder, SHADOW, migrations)
        listed = await shadow.tables(builder, SHADOW)
        assert (listed["campaign_reasons"], listed["campaigns"]) == (["campaigns"], [])
        await shadow.make_durable(builder, SHADOW)
        persistence = await builder.fetch(
            "SELECT DISTINCT relpersistence FROM pg_class"
            " WHERE relnamespace = $1::regnamespace AND relkind = 'r'",
            SHADOW,
        )
    finally:
        await builder.close()
    assert [row["relpersistence"] for row in persistence] == [b"p"]  # "char": bytes
