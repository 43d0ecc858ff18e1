"""The interaction store's reads on real PostgreSQL: the overview (the customer 360's share), its
timeline page and contact summary from one statement, equal to what the page and summary reads
give apart; and a journey read back (by the fold's lock and by the API) as it was saved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crm_shared.contracts.events import JourneyStage
from crm_shared.runtime.db import open_pool
from interaction_service import store
from interaction_service.config import MIGRATIONS
from interaction_service.journey import Journey
from interaction_service.projection import ContactTotals, TimelineEntry, TimelineQuery

pytestmark = pytest.mark.component

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=30)


def _totals(contacts: int, **directions: int) -> ContactTotals:
    first, last = T0, T0 + timedelta(hours=contacts)
    return ContactTotals(
        touchpoints=contacts,
        contacts=contacts,
        first_contact_at=first,
        last_contact_at=last,
        first_touchpoint_at=first,
        last_touchpoint_at=last,
        **directions,
    )


def _call(customer: str, hour: int) -> TimelineEntry:
    at = T0 + timedelta(hours=hour)
    return TimelineEntry(
        source="call-centre",
        event_id=f"{customer}-call-{hour}",
        customer_id=customer,
        occurred_at=at,
        recorded_at=at,
        kind="contact",
        event_type="crm.contact.logged.v1",
        channel="phone",
        direction="inbound",
        department="support",
        employee_id=None,
        topic=f"call {hour}",
        outcome="resolved",
        summary=f"phone call {hour}",
        details=f'{{"topic": "call {hour}"}}',
    )


async def test_the_overview_reads_the_page_and_the_summary_as_their_own_reads_do(
    fresh_dsn: str,
) -> None:
    pool = await open_pool(fresh_dsn, MIGRATIONS, 1)
    try:
        async with pool.acquire() as conn:
            await store.add_to_timeline(conn, [_call("C-1", hour) for hour in (3, 1, 2)])
            await store.add_to_timeline(conn, [_call("C-other", 5)])
            await store.add_to_summaries(
                conn,
                {
                    "C-1": _totals(3, inbound=3),
                    # A summary without a timeline entry recorded by the read's instant.
                    "C-summary-only": _totals(1, outbound=1),
                },
            )
            rows, totals = await store.overview(conn, "C-1", as_of=NOW, limit=2)
            page = await store.timeline_page(
                conn, "C-1", TimelineQuery(), as_of=NOW, after=None, limit=2
            )
            assert rows == page
            assert [row["event_id"] for row in rows] == ["C-1-call-3", "C-1-call-2"]
            assert rows[0]["details"] == {"topic": "call 3"}
            assert totals == await store.contact_summary(conn, "C-1")
            assert totals is not None and totals.contacts == 3

            only_summary = await store.overview(conn, "C-summary-only", as_of=NOW, limit=2)
            assert only_summary == ([], _totals(1, outbound=1))
            assert await store.overview(conn, "C-nobody", as_of=NOW, limit=2) == ([], None)
            # Nothing recorded by the instant asked: no page, the summary still.
            before, still = await store.overview(conn, "C-1", as_of=T0, limit=2)
            assert before == [] and still == totals
    finally:
        await pool.close()


async def test_a_journey_reads_back_as_it_was_saved_in_every_stage(fresh_dsn: str) -> None:
    saved = [
        Journey(
            customer_id=f"C-{stage.value}",
            stage=stage,
            entered_at=T0 + timedelta(days=n),
            version=n + 1,
            orders=n,
            first_order_at=T0,
            first_order_id="O-1",
            last_order_at=T0 + timedelta(days=n),
            order_partition=n % 3,
            interested=n % 2 == 0,
            last_nps=n,
            last_nps_at=T0,
            praised=n % 2 == 1,
            first_contact_at=T0,
        )
        for n, stage in enumerate(JourneyStage)
    ]
    pool = await open_pool(fresh_dsn, MIGRATIONS, 1)
    try:
        async with pool.acquire() as conn:
            await store.save_journeys(conn, saved)
            for journey in saved:
                assert await store.journey_of(conn, journey.customer_id) == journey
            async with conn.transaction():
                locked = await store.lock_journeys(conn, [j.customer_id for j in saved])
            assert locked == {journey.customer_id: journey for journey in saved}
    finally:
        await pool.close()
