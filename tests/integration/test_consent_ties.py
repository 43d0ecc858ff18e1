"""When in doubt, do not contact: a revocation and a grant of the same consent at the same
instant give "revoked", whichever arrives first, through Kafka and in the SQL guard itself."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from broadcast_service import store
from broadcast_service.projection import ChannelPreferences, ChannelSetup, Consent
from broadcast_service.worker import MIGRATIONS
from crm_shared.contracts.sdk import EventPublisher
from crm_shared.runtime.db import open_pool
from tests.integration.helpers import eventually, fetch, get_json, service_auth, unique

pytestmark = pytest.mark.integration

T = datetime(2024, 8, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("first", ["revoked", "granted"])
async def test_a_revocation_and_a_grant_of_the_same_instant_give_revoked_in_either_order(
    platform: dict[str, str], first: str
) -> None:
    customer = unique("tie")
    # Source and id favour the grant, so only "revocation over grant" can make the revocation win.
    events = {
        "granted": ("crm.consent.granted.v1", "zz-crm", f"{customer}-z"),
        "revoked": ("crm.consent.revoked.v1", "aa-crm", f"{customer}-a"),
    }
    order = [first, *(state for state in events if state != first)]
    base = f"http://127.0.0.1:{platform['CRM_BROADCAST_API_PORT']}/customers/{customer}"
    for folded, state in enumerate(order, start=1):
        event_type, source, event_id = events[state]
        with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source=source) as publisher:
            publisher.publish(
                event_type,
                customer,
                {"purpose": "marketing", "channel": "email"},
                time=T,
                event_id=event_id,
            )
        # Folded and committed before the next one is even published: two separate batches.
        await eventually(
            lambda: get_json(f"{base}/consent-history", headers=service_auth(platform)),
            lambda r, n=folded: r[0] == 200 and len(r[1]) == n,
            what=f"{folded} consent event(s) in the history",
        )
        if folded == 1:
            _, view = await get_json(f"{base}/preferences", headers=service_auth(platform))
            assert [c["granted"] for c in view["consents"]] == [state == "granted"]
    _, view = await get_json(f"{base}/preferences", headers=service_auth(platform))
    assert [(c["purpose"], c["channel"], c["granted"]) for c in view["consents"]] == [
        ("marketing", "email", False)
    ]
    assert datetime.fromisoformat(view["consents"][0]["changed_at"]) == T
    rows = await fetch(
        f"{platform['CRM_PG_DSN_BASE']}/crm_broadcast",
        "SELECT granted, event_id FROM consents WHERE customer_id = $1",
        customer,
    )
    assert [(r["granted"], r["event_id"]) for r in rows] == [(False, events["revoked"][2])]


@pytest.fixture
async def broadcast_db(platform_env: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    """A scratch broadcast database, migrated like the real one, dropped afterwards."""
    name = f"crm_broadcast_guard_{uuid.uuid4().hex[:10]}"
    base = platform_env["CRM_PG_DSN_BASE"]
    pool = await open_pool(f"{base}/{name}", MIGRATIONS, 2)
    try:
        yield pool
    finally:
        await pool.close()
        await fetch(f"{base}/postgres", f'DROP DATABASE "{name}" WITH (FORCE)')


def _consent(granted: bool, source: str, event_id: str, minutes: int = 0) -> Consent:
    state = "granted" if granted else "revoked"
    return Consent(
        "C", "marketing", "email", state, T + timedelta(minutes=minutes), source, event_id
    )


def _preferences(source: str, event_id: str, minutes: int = 0) -> ChannelPreferences:
    return ChannelPreferences(
        "C", (ChannelSetup("email"),), "UTC", T + timedelta(minutes=minutes), source, event_id
    )


SAME_INSTANT_PAIRS = {
    "revocation over grant": (_consent(True, "zz", "z"), _consent(False, "aa", "a")),
    "then source by code point": (_consent(True, "Z-pos", "1"), _consent(True, "a-pos", "1")),
    "then id by code point": (_consent(False, "pos", "Z"), _consent(False, "pos", "a")),
    "time first": (_consent(False, "zz", "z"), _consent(True, "aa", "a", minutes=1)),
}


async def _save_in_turn(pool: asyncpg.Pool, save: Any, rows: list[Any]) -> None:
    """Each row in its own transaction, bypassing the pure fold: only the SQL guard decides."""
    for row in rows:
        async with pool.acquire() as conn, conn.transaction():
            await save(conn, [row])


@pytest.mark.parametrize("pair", SAME_INSTANT_PAIRS.values(), ids=SAME_INSTANT_PAIRS.keys())
async def test_the_consent_guard_in_sql_keeps_what_the_pure_rule_keeps(
    broadcast_db: asyncpg.Pool, pair: tuple[Consent, Consent]
) -> None:
    for n, order in enumerate((pair, pair[::-1])):
        customer = f"C-{n}"
        rows = [replace(consent, customer_id=customer) for consent in order]
        await _save_in_turn(broadcast_db, store.save_consents, rows)
        async with broadcast_db.acquire() as conn:
            reach = (await store.reaches_of(conn, [customer]))[customer]
        assert list(reach.consents.values()) == [max(rows, key=lambda c: c.version)]


async def test_the_preference_guard_in_sql_breaks_ties_by_source_and_id_like_the_pure_rule(
    broadcast_db: asyncpg.Pool,
) -> None:
    pairs = [
        (_preferences("Z-web", "1"), _preferences("a-web", "1")),
        (_preferences("web", "Z"), _preferences("web", "a")),
        (_preferences("zz", "z"), _preferences("aa", "a", minutes=1)),
    ]
    for n, pair in enumerate(pairs):
        for m, order in enumerate((pair, pair[::-1])):
            customer = f"P-{n}-{m}"
            rows = [replace(preferences, customer_id=customer) for preferences in order]
            await _save_in_turn(broadcast_db, store.save_preferences, rows)
            async with broadcast_db.acquire() as conn:
                reach = (await store.reaches_of(conn, [customer]))[customer]
            assert reach.preferences == max(rows, key=lambda p: p.version)
