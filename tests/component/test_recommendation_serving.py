"""The served model on real PostgreSQL (no Kafka): the trainer writes a version (ALS factors,
seasonal votes, EASE weights) and every customer's picks and swaps them in at once; a customer's
own purchase refreshes their picks with the version served; a retrain request is answered by the
next version; old versions are pruned with their weights."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import asyncpg
import pytest

from recommendation_service import jobs, serving, store
from recommendation_service.evaluation import BLEND_WEIGHTS
from recommendation_service.jobs import refresh_neighbours, refresh_picks, train_model
from recommendation_service.models import AlsParameters, EaseParameters
from recommendation_service.store import VERSIONS_KEPT
from tests.component.test_recommendation_neighbours import _order, fold, pool, project

pytestmark = pytest.mark.component
__all__ = ["pool"]  # the fixture, shared with the neighbour tests

BASKETS = {
    "C1": ["JAM", "TEA", "POST"],
    "C2": ["JAM", "TEA", "MUG"],
    "C3": ["JAM", "TEA"],
    "C4": ["TEA", "CUP", "gift_0001_20"],
    "C5": ["MUG", "CUP"],
    "ME": ["JAM"],
}
NOT_GOODS = {"POST", "gift_0001_20"}


async def _folded(pool: asyncpg.Pool) -> None:
    events = [_order(n, customer, basket) for n, (customer, basket) in enumerate(BASKETS.items())]
    await fold(pool, events, batch=2, job_every=1)


async def _picks(pool: asyncpg.Pool, customer: str, limit: int = 50) -> dict[str, Any] | None:
    """The customer's stored picks as the API reads them, decoded."""
    async with pool.acquire() as conn:
        found = await store.customer_picks(conn, customer, limit)
    return None if found["picks"] is None else {**found, "picks": json.loads(found["picks"])}


async def test_training_swaps_in_a_version_with_every_customers_picks(pool: asyncpg.Pool) -> None:
    await _folded(pool)
    assert await refresh_picks(pool) == 0  # no version yet: the marks wait
    version = await train_model(pool)
    assert version is not None
    assert await train_model(pool) is None  # not due again for an hour, nothing requested
    async with pool.acquire() as conn:
        model = await store.current_model(conn)
        assert model is not None and model["version"] == version
        assert model["metrics"]["customers"] == len(BASKETS)
        assert model["metrics"]["products"] == 4  # JAM TEA MUG CUP: goods only
        assert model["parameters"]["blend_weights"] == BLEND_WEIGHTS
        assert model["parameters"]["ease"] == asdict(EaseParameters())
        stored = await conn.fetch("SELECT customer_id, version FROM customer_picks")
        weights = await store.model_item_weights(conn, version)
        trained = serving.train(await store.kept_purchases(conn), AlsParameters(), EaseParameters())
    # the version's EASE and sequel weights are what training computes (neither has randomness)
    for part, matrix in trained.item_weights().items():
        found = matrix.tocoo()
        assert sorted(weights.get(part, [])) == sorted(
            (trained.products[a], trained.products[b], float(w))
            for a, b, w in zip(found.row, found.col, found.data, strict=True)
        ), part
    assert weights["ease"]
    assert {row["customer_id"] for row in stored} == set(BASKETS)
    assert {row["version"] for row in stored} == {version}
    for customer, basket in BASKETS.items():
        found = await _picks(pool, customer)
        assert found is not None
        offered = [pick["product_id"] for pick in found["picks"]]
        assert not set(offered) & (set(basket) | NOT_GOODS), customer
        for pick in found["picks"]:
            if pick["reason"]["kind"] == "bought-together":
                assert pick["reason"]["product_id"] in basket
    mine = await _picks(pool, "ME")
    assert mine is not None
    first = await _picks(pool, "ME", limit=1)
    assert first is not None and first["picks"] == mine["picks"][:1]
    # JAM's buyers all bought TEA: the strongest vote, and the reason names JAM
    assert mine["picks"][0]["product_id"] == "TEA"
    assert mine["picks"][0]["reason"] == {
        "kind": "bought-together",
        "product_id": "JAM",
        "text": "bought together with JAM",
    }


async def test_a_customers_purchase_refreshes_their_picks_with_the_version_served(
    pool: asyncpg.Pool,
) -> None:
    await _folded(pool)
    version = await train_model(pool)
    while await refresh_picks(pool):  # the marks of the first orders
        pass
    await project(pool, [_order(50, "ME", ["TEA", "NEW"]), _order(51, "C9", ["NEW", "CUP"])], 2, 50)
    await refresh_neighbours(pool)
    assert await refresh_picks(pool) == 2
    mine = await _picks(pool, "ME")
    assert mine is not None and mine["version"] == version
    offered = [pick["product_id"] for pick in mine["picks"]]
    assert "TEA" not in offered and "NEW" not in offered  # bought now
    assert "CUP" in offered  # bought with NEW, a product the version has never seen
    newcomer = await _picks(pool, "C9")
    assert newcomer is not None
    assert {pick["product_id"] for pick in newcomer["picks"]} >= {"TEA"}
    assert await refresh_picks(pool) == 0  # marks cleared


async def test_a_retrain_request_is_answered_by_the_next_version_and_old_ones_pruned(
    pool: asyncpg.Pool,
) -> None:
    await _folded(pool)
    versions = [await train_model(pool)]
    for _ in range(VERSIONS_KEPT + 1):
        async with pool.acquire() as conn:
            request = await store.request_retrain(conn)
        versions.append(await train_model(pool))
        async with pool.acquire() as conn:
            answered = await store.retrain_request(conn, request["request_id"])
        assert answered is not None and answered["version"] == versions[-1]
    assert versions == sorted(set(versions))
    async with pool.acquire() as conn:
        kept = await conn.fetch("SELECT version FROM model_versions ORDER BY version")
        assert [row["version"] for row in kept] == versions[-VERSIONS_KEPT:]
        assert {
            row["version"] for row in await conn.fetch("SELECT version FROM customer_picks")
        } == {versions[-1]}
        # a version's EASE and sequel weights go with it
        assert {
            row["version"]
            for row in await conn.fetch("SELECT DISTINCT version FROM model_item_weights")
        } == set(versions[-VERSIONS_KEPT:])


async def test_a_version_trained_for_the_blend_served_before_is_replaced_at_once(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version written before the EASE blend was served (no EASE parameters or weights): the
    picks job still serves with it, and the trainer replaces it without waiting for the hour."""
    await _folded(pool)
    first = await train_model(pool)
    assert first is not None
    async with pool.acquire() as conn:
        await conn.execute(
            """
            UPDATE model_versions SET parameters = parameters - 'ease'
                || '{"blend_weights": {"item-knn": 1.0, "als": 1.0, "seasonal": 1.0}}'::jsonb
            WHERE version = $1
            """,
            first,
        )
        await conn.execute("DELETE FROM model_item_weights WHERE version = $1", first)
    monkeypatch.setattr(jobs, "SERVED", jobs.ServedModel())  # loads the version as stored
    while await refresh_picks(pool):  # the marks of the first orders
        pass
    await project(pool, [_order(50, "ME", ["TEA"])], batch=1, offset=50)
    assert await refresh_picks(pool) == 1
    mine = await _picks(pool, "ME")
    assert mine is not None and mine["version"] == first and mine["picks"]
    second = await train_model(pool)
    assert second is not None and second > first
    async with pool.acquire() as conn:
        model = await store.current_model(conn)
    assert model is not None and model["parameters"]["blend_weights"] == BLEND_WEIGHTS
