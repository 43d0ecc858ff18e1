"""Published lists and consent to personalisation on real PostgreSQL (no Kafka): a swap puts one
crm.recommendations.refreshed.v1 per customer in the outbox with their picks, a swap that changes
nothing for anyone adds none, a revoked consent makes the stored picks and the published list
popular goods at the next run of the picks job, and a new grant makes them personal again."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from crm_shared.contracts.events import RECOMMENDATIONS_REFRESHED, build_event
from recommendation_service import store
from recommendation_service.api import create_app
from recommendation_service.config import RecommendationSettings
from recommendation_service.jobs import refresh_picks, train_model
from recommendation_service.published import NEW_PRODUCTS, PUBLISHED_PICKS
from tests.component.service_api import api_get
from tests.component.test_recommendation_neighbours import T0, pool, project
from tests.component.test_recommendation_serving import _folded

pytestmark = pytest.mark.component
__all__ = ["pool"]


async def _api_answer(dsn: str, customer: str) -> dict[str, Any]:
    """The API's answer for a customer's recommendations, served from this database."""
    settings = RecommendationSettings(database_url=dsn)
    path = f"/customers/{customer}/recommendations"
    response = await api_get(create_app(settings), settings, path)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _published(pool: asyncpg.Pool) -> dict[str, list[dict[str, Any]]]:
    """The events in the outbox by customer, oldest first, decoded."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT key, value FROM outbox WHERE type = $1 ORDER BY seq", RECOMMENDATIONS_REFRESHED
        )
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        found.setdefault(row["key"].decode(), []).append(json.loads(row["value"]))
    return found


def _consent(n: int, customer: str, state: str) -> dict[str, Any]:
    return build_event(
        "crm.consent.recorded.v2",
        customer,
        {"purpose": "personalisation", "state": state, "capture_method": "preference_centre"},
        source="web-site",
        time=T0 + timedelta(days=1, minutes=n),
        event_id=f"consent-{n}",
    )


async def test_a_swap_publishes_each_customers_list_once_and_only_changes_after(
    pool: asyncpg.Pool,
) -> None:
    await _folded(pool)
    version = await train_model(pool)
    published = await _published(pool)
    async with pool.acquire() as conn:
        customers = {row[0] for row in await conn.fetch("SELECT customer_id FROM customer_picks")}
        first_sold = await conn.fetch("SELECT product_id FROM products WHERE first_sold_at IS NULL")
    assert set(published) == customers and len(customers) == 6
    assert not first_sold  # every product bought has its first sale
    mine = published["ME"]
    assert len(mine) == 1
    data = mine[0]["data"]
    assert (data["version"], data["model_version"], data["personalised"]) == (1, version, True)
    async with pool.acquire() as conn:
        stored = await store.customer_picks(conn, "ME", PUBLISHED_PICKS)
    assert stored["picks"] is not None
    assert [p["product_id"] for p in data["picks"]] == [
        p["product_id"] for p in json.loads(stored["picks"])
    ]
    assert data["picks"][0]["reason"] == "bought together with JAM"
    assert 0 < len(data["new_products"]) <= NEW_PRODUCTS
    assert "JAM" not in {p["product_id"] for p in data["new_products"]}  # ME bought it

    async with pool.acquire() as conn:
        await store.request_retrain(conn)
    assert await train_model(pool) == version + 1  # the same data: the same lists
    assert await _published(pool) == published


async def test_a_changed_consent_is_recomputed_before_the_purchases_waiting(
    pool: asyncpg.Pool,
) -> None:
    # Every customer's purchases wait for the picks job; ME's revocation comes last but goes first.
    await _folded(pool)
    async with pool.acquire() as conn:
        waiting = list(await store.marked_customers(conn, 100))
    assert len(waiting) == 6 and waiting[0] != "ME"
    await project(pool, [_consent(1, "ME", "revoked")], 1)
    async with pool.acquire() as conn:
        after = list(await store.marked_customers(conn, 100))
    assert after == ["ME", *(customer for customer in waiting if customer != "ME")]


async def test_revoking_consent_publishes_popular_goods_and_granting_again_personal_picks(
    pool: asyncpg.Pool, fresh_dsn: str
) -> None:
    await _folded(pool)
    await train_model(pool)
    while await refresh_picks(pool):
        pass
    before = await _published(pool)
    assert (await _api_answer(fresh_dsn, "ME"))["strategy"] == "personal"

    await project(pool, [_consent(1, "ME", "revoked")], 1)
    # before the picks job runs, the API already refuses the stored personal picks
    answer = await _api_answer(fresh_dsn, "ME")
    assert answer["strategy"] == "popular"
    assert "JAM" in {pick["product_id"] for pick in answer["recommendations"]}  # not filtered
    assert await refresh_picks(pool) == 1
    async with pool.acquire() as conn:
        stored = await store.customer_picks(conn, "ME", 50)
        popular = await store.popular_products(conn, 50)
    assert stored["picks"] is not None and not stored["personalised"]
    assert stored["consent"] == "revoked"
    # nothing of mine is used: the popular goods as everyone gets them, JAM (mine) included
    assert [p["product_id"] for p in json.loads(stored["picks"])] == [
        row["product_id"] for row in popular
    ]
    published = await _published(pool)
    assert {c: len(e) for c, e in published.items()} == {
        **{c: len(e) for c, e in before.items()},
        "ME": 2,
    }
    refused = published["ME"][-1]["data"]
    assert (refused["version"], refused["personalised"]) == (2, False)
    assert {p["reason"] for p in refused["picks"]} == {"popular"}

    await project(pool, [_consent(2, "ME", "pending")], 1, offset=1)  # unconfirmed: still no
    assert await refresh_picks(pool) == 1
    assert len((await _published(pool))["ME"]) == 2  # the same list: nothing published

    await project(pool, [_consent(3, "ME", "granted")], 1, offset=2)
    assert await refresh_picks(pool) == 1
    granted = (await _published(pool))["ME"][-1]["data"]
    assert (granted["version"], granted["personalised"]) == (3, True)
    assert [p["product_id"] for p in granted["picks"]] == [
        p["product_id"] for p in before["ME"][-1]["data"]["picks"]
    ]

    # an older decision arriving late changes nothing (last writer wins by event time)
    await project(pool, [_consent(0, "ME", "denied")], 1, offset=3)
    async with pool.acquire() as conn:
        assert (await store.customer_picks(conn, "ME", 1))["consent"] == "granted"
