"""How PostgreSQL plans a fold's statements, live and in a rebuild: the batch's keys are looked
up by index, in the plan made for the batch and in the generic plan a fold's statements take
after five runs (the fold sets its own page cost and plan cache mode). On real PostgreSQL, with
the interaction projection (its journeys lock is the statement that scanned the whole table).
The pool's defaults from migrations: tests/component/test_timeline_plans.py."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from crm_shared.contracts.events import Event
from crm_shared.runtime.bulk import BulkFolder
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.projector import (
    FOLD_PLAN_CACHE_MODE,
    FOLD_RANDOM_PAGE_COST,
    BatchProjector,
    Fold,
)
from interaction_service.config import MIGRATIONS
from interaction_service.worker import PROJECTION
from tests.component.partition_logs import no_dead_letters
from tests.component.plans import explained
from tests.component.pools import migrated_pool
from tests.component.test_counted_after_commit import contact

pytestmark = pytest.mark.component

JOURNEYS = 20_000
LOCKED = 300


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(fresh_dsn, MIGRATIONS, size=4) as pool:
        yield pool


_LOCK = "SELECT * FROM journeys WHERE customer_id = ANY($1::text[]) ORDER BY customer_id FOR UPDATE"


async def _planning_fold(pool: asyncpg.Pool) -> tuple[Fold, list[tuple[str, str, str, str]]]:
    """Journeys enough for a scan to look cheap at PostgreSQL's default page cost, and the
    interaction fold preceded by a look at how a fold's lock of some of them is planned (the
    page cost and plan cache mode in force, the plan for these keys, the generic plan), noted in
    the list returned."""
    await pool.execute(
        """
        INSERT INTO journeys (customer_id, stage, entered_at, version, orders, interested, praised)
        SELECT 'C' || n, 'aware', now(), 1, 0, false, false FROM generate_series(1, $1) AS n
        """,
        JOURNEYS,
    )
    await pool.execute("ANALYZE journeys")
    wanted = [f"C{n}" for n in range(1, JOURNEYS, JOURNEYS // LOCKED)]
    seen: list[tuple[str, str, str, str]] = []

    async def planned(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
        page_cost = await conn.fetchval("SHOW random_page_cost")
        mode = await conn.fetchval("SHOW plan_cache_mode")
        plan = await explained(conn, _LOCK, wanted)
        await conn.execute(f"PREPARE planned_lock(text[]) AS {_LOCK}")
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        keys = "{" + ",".join(wanted) + "}"  # plain ids: a literal, as EXECUTE takes no parameter
        generic = await explained(conn, f"EXECUTE planned_lock('{keys}')")
        await conn.execute(f"SET LOCAL plan_cache_mode = {mode}; DEALLOCATE planned_lock")
        seen.append((page_cost, mode, plan, generic))
        return await PROJECTION.fold(conn, events)

    return planned, seen


def _looked_up_by_index(seen: list[tuple[str, str, str, str]]) -> None:
    [(page_cost, mode, plan, generic)] = seen
    assert float(page_cost) == FOLD_RANDOM_PAGE_COST
    assert mode == FOLD_PLAN_CACHE_MODE
    for made in (plan, generic):
        assert "Index Scan using journeys_pkey" in made, made
        assert "Seq Scan" not in made, made
    assert "$1" in generic, generic  # the plan made without the keys


async def test_a_fold_locks_its_batch_of_journeys_by_index_not_by_scanning_them_all(
    pool: asyncpg.Pool,
) -> None:
    planned, seen = await _planning_fold(pool)
    projector = BatchProjector(dataclasses.replace(PROJECTION, fold=planned), pool, no_dead_letters)
    await projector.reload_positions()
    await projector.process([contact(0, "first")])

    _looked_up_by_index(seen)
    assert await pool.fetchval("SELECT count(*) FROM timeline") == 1
    # Only the fold's transaction: the pool's sessions keep the server's and database's defaults.
    assert float(await pool.fetchval("SHOW random_page_cost")) != FOLD_RANDOM_PAGE_COST


async def test_a_rebuild_folds_at_the_same_page_cost(pool: asyncpg.Pool) -> None:
    """The bulk fold of a rebuild (BulkFolder) runs in a transaction priced as the live one."""
    planned, seen = await _planning_fold(pool)
    async with pool.acquire() as conn:
        folder = BulkFolder(
            dataclasses.replace(PROJECTION, fold=planned, bulk_fold=None),
            conn,
            consumer="interaction-rebuild",
        )
        await folder.fold(await folder.decode([contact(0, "first")]), 1)
        assert float(await conn.fetchval("SHOW random_page_cost")) != FOLD_RANDOM_PAGE_COST

    _looked_up_by_index(seen)
    assert await pool.fetchval("SELECT count(*) FROM timeline") == 1
