"""The catalogue, its filters and trending on real PostgreSQL (no Kafka): catalogue records fold
latest-by-event-time whatever the batches, the kind decides what is goods, new arrivals come by
first listing, filtered picks are topped up with popular goods that match, and trending is kept
for everyone, per country and per segment, refunds counted against it, the same whatever the
batch boundaries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from crm_shared.contracts.events import build_event
from recommendation_service import store, trending
from recommendation_service.api import create_app
from recommendation_service.config import RecommendationSettings
from recommendation_service.jobs import train_model
from tests.component.service_api import api_get
from tests.component.test_recommendation_neighbours import T0, fold, pool

pytestmark = pytest.mark.component
__all__ = ["pool"]

# product -> (category, price, available); CUP is never catalogued; SHIP is postage by its kind.
CATALOGUE = {
    "JAM": ("kitchen", "3.00", True),
    "TEA": ("kitchen", "2.00", True),
    "MUG": ("kitchen", "8.00", False),
    "BOWL": ("kitchen", "4.00", True),
    "SEED": ("garden", "1.00", True),
    "SHIP": ("kitchen", "5.00", True),
}
BASKETS = [  # (customer, country, products)
    ("C1", "GB", ["JAM", "TEA", "SHIP"]),
    ("C2", "GB", ["JAM", "TEA", "MUG", "SHIP"]),
    ("C3", "FR", ["JAM", "TEA", "CUP", "SHIP"]),
    ("C4", "FR", ["TEA", "BOWL", "SEED", "SHIP"]),
    ("C5", None, ["MUG", "CUP", "SEED", "SHIP"]),
    ("ME", "GB", ["JAM"]),
]


def _catalogued(n: int, product: str, **changes: Any) -> dict[str, Any]:
    category, price, available = CATALOGUE.get(product, ("garden", "1.50", True))
    data = {
        "product_id": product,
        "name": f"{product.lower()} from the catalogue",
        "category": category,
        "price": price,
        "available": available,
        "kind": "postage" if product == "SHIP" else "goods",
        **changes,
    }
    return build_event(
        "crm.product.catalogued.v1",
        product,
        data,
        source="pim",
        time=T0 - timedelta(days=10) + timedelta(hours=n),
        event_id=f"cat-{n}",
    )


def _events() -> list[dict[str, Any]]:
    events = [_catalogued(n, product) for n, product in enumerate(CATALOGUE)]
    # An older record of JAM arrives last: it changes nothing but its first listing.
    events.append(_catalogued(-50, "JAM", category="toys", price="99"))
    events.append(_catalogued(60, "NEW"))
    events.append(
        build_event(
            "crm.segment.entered.v1",
            "C4",
            {"segment": "vip", "version": 1, "reason": "big spender"},
            source="profile-service",
            time=T0,
            event_id="seg-1",
        )
    )
    for n, (customer, country, products) in enumerate(BASKETS):
        data: dict[str, Any] = {
            "order_id": f"O{n}",
            "lines": [{"product_id": p, "quantity": 1, "unit_price": "1"} for p in products],
        }
        if country is not None:
            data["country"] = country
        events.append(
            build_event(
                "crm.order.placed.v1",
                customer,
                data,
                source="shop",
                time=T0 + timedelta(days=n),
                event_id=f"order-{n}",
            )
        )
    return events


async def _get(dsn: str, path: str) -> tuple[int, Any]:
    settings = RecommendationSettings(database_url=dsn)
    response = await api_get(create_app(settings), settings, path)
    return response.status_code, response.json()


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["product_id"] for item in items]


async def _state(pool: asyncpg.Pool) -> tuple[list[Any], dict[str, list[str]]]:
    async with pool.acquire() as conn:
        catalogue = await conn.fetch("SELECT * FROM catalogue ORDER BY product_id")
        ranks = {
            scope: [row["product_id"] for row in await store.trending(conn, scope, 100)]
            for scope in ("", "country:GB", "country:FR", "segment:vip")
        }
    return [dict(row) for row in catalogue], ranks


@pytest.mark.parametrize("batch", [1, 4, 100])
async def test_catalogue_and_trending_fold_the_same_whatever_the_batches(
    pool: asyncpg.Pool, batch: int
) -> None:
    await fold(pool, _events(), batch, job_every=1)
    catalogue, ranks = await _state(pool)
    jam = next(row for row in catalogue if row["product_id"] == "JAM")
    assert (jam["category"], str(jam["price"]), jam["name"]) == (
        "kitchen",
        "3.0000",
        "jam from the catalogue",
    )
    assert jam["first_listed_at"] == T0 - timedelta(days=10, hours=50)
    # Everyone: by decayed purchases; a purchase five days later outweighs one five days earlier.
    # Never SHIP (postage by its kind), nor MUG (out of stock in the catalogue).
    assert ranks[""] == ["JAM", "TEA", "SEED", "CUP", "BOWL"]
    assert ranks["country:GB"] == ["JAM", "TEA"]
    assert ranks["country:FR"] == ["TEA", "BOWL", "SEED", "CUP", "JAM"]
    assert ranks["segment:vip"] == ["BOWL", "SEED", "TEA"]
    async with pool.acquire() as conn:
        goods = dict(await conn.fetch("SELECT product_id, goods FROM products"))
        newest = await store.newest_products(conn, 3)
    assert goods["SHIP"] is False and goods["JAM"] is True and goods["CUP"] is True
    # New arrivals: first listed, never sold; MUG is out of stock; CUP never listed: first sale.
    assert _ids(newest) == ["CUP", "NEW", "SEED"]


async def test_trending_route_scopes_reasons_and_bad_requests(
    pool: asyncpg.Pool, fresh_dsn: str
) -> None:
    await fold(pool, _events(), 10, job_every=1)
    status, everyone = await _get(fresh_dsn, "/products/trending?limit=2")
    assert status == 200
    assert _ids(everyone["products"]) == ["JAM", "TEA"]
    assert everyone["half_life_days"] == 7.0
    assert everyone["as_of"].startswith((T0 + timedelta(days=5)).date().isoformat())
    jam = everyone["products"][0]
    # JAM: bought on days 0, 1, 2 and 5; as of day 5 with a 7-day half-life.
    assert jam["score"] == pytest.approx(sum(0.5 ** ((5 - day) / 7) for day in (0, 1, 2, 5)))
    assert jam["purchases"] == 4 and jam["reason"]["text"] == "trending"
    _, gb = await _get(fresh_dsn, "/products/trending?country=GB")
    assert {p["reason"]["text"] for p in gb["products"]} == {"trending in GB"}
    _, vip = await _get(fresh_dsn, "/products/trending?segment=vip")
    assert {p["reason"]["text"] for p in vip["products"]} == {"popular in your segment"}
    status, both = await _get(fresh_dsn, "/products/trending?country=GB&segment=vip")
    assert status == 422 and "not both" in both["error"]["message"]
    status, _ = await _get(fresh_dsn, "/products/trending?country=gb")
    assert status == 422


async def test_filters_narrow_picks_and_similar_items_and_top_them_up(
    pool: asyncpg.Pool, fresh_dsn: str
) -> None:
    await fold(pool, _events(), 10, job_every=1)
    assert await train_model(pool) is not None
    status, plain = await _get(fresh_dsn, "/customers/ME/recommendations?limit=50")
    assert status == 200 and plain["strategy"] == "personal"
    personal = _ids(plain["recommendations"])

    status, kitchen = await _get(
        fresh_dsn, "/customers/ME/recommendations?category=kitchen&available=true&limit=5"
    )
    assert status == 200
    found = kitchen["recommendations"]
    # Only catalogued kitchen goods in stock: never MUG (out of stock), CUP (not catalogued),
    # SEED (garden), SHIP (postage); personal picks first in their order, then popular goods.
    assert set(_ids(found)) <= {"TEA", "BOWL"}
    picked = [p for p in personal if p in {"TEA", "BOWL"}]
    assert _ids(found)[: len(picked)] == picked
    assert all(p["reason"]["kind"] == "popular" for p in found[len(picked) :])
    assert kitchen["strategy"] == ("personal" if picked else "popular")
    assert kitchen["model"] == plain["model"]

    _, cheap = await _get(fresh_dsn, "/customers/ME/recommendations?max_price=1.20")
    assert _ids(cheap["recommendations"]) == ["SEED"]  # SEED 1.00; NEW (1.50) never sold

    status, refused = await _get(fresh_dsn, "/customers/ME/recommendations?min_price=5&max_price=2")
    assert status == 422
    assert refused["error"]["message"] == "min_price 5 is above max_price 2: no price fits"

    status, similar = await _get(fresh_dsn, "/products/JAM/similar?max_price=2.50&limit=3")
    assert status == 200 and similar["strategy"] == "bought-together"
    assert similar["similar"][0]["product_id"] == "TEA"  # bought together, 2.00
    assert similar["similar"][0]["reason"]["kind"] == "bought-together"
    # Topped up with the popular goods at most 2.50 in GBP: SEED; never JAM itself.
    assert _ids(similar["similar"]) == ["TEA", "SEED"]

    # Nothing in the garden is bought with JAM: popular garden goods (NEW has no buyer yet).
    _, garden = await _get(fresh_dsn, "/products/JAM/similar?category=garden")
    assert garden["strategy"] == "popular" and _ids(garden["similar"]) == ["SEED"]
    status, _ = await _get(fresh_dsn, "/products/JAM/similar?currency=pounds")
    assert status == 422


async def test_a_customers_picks_refuse_bad_parameters_with_where_and_why(
    pool: asyncpg.Pool, fresh_dsn: str
) -> None:
    """The route validates its parameters itself (one model, not FastAPI's per-parameter
    solving): each bad one is still a 422 that names it, as FastAPI's own are."""
    await fold(pool, _events(), 10, job_every=1)
    assert await train_model(pool) is not None
    bad = {
        "/customers/ME/recommendations?limit=0": "query.limit",
        "/customers/ME/recommendations?limit=51": "query.limit",
        "/customers/ME/recommendations?limit=ten": "query.limit",
        "/customers/ME/recommendations?available=maybe": "query.available",
        "/customers/ME/recommendations?currency=pounds&limit=3": "query.currency",
        "/customers/ME/recommendations?min_price=-1": "query.min_price",
        "/customers/M%20E/recommendations": "path.customer_id",
    }
    for path, where in bad.items():
        status, refused = await _get(fresh_dsn, path)
        assert status == 422, path
        assert refused["error"]["message"] == "the request is invalid"
        assert [problem["where"] for problem in refused["error"]["details"]] == [where], path
    status, answer = await _get(fresh_dsn, "/customers/ME/recommendations?limit=2&unknown=1")
    assert status == 200 and len(answer["recommendations"]) == 2  # unknown ones are ignored


def test_the_customers_picks_route_documents_its_parameters_and_answer() -> None:
    operation = create_app(RecommendationSettings()).openapi()["paths"][
        "/customers/{customer_id}/recommendations"
    ]["get"]
    documented = {(p["name"], p["in"], p["required"]) for p in operation["parameters"]}
    assert documented == {
        ("customer_id", "path", True),
        ("limit", "query", False),
        ("category", "query", False),
        ("min_price", "query", False),
        ("max_price", "query", False),
        ("currency", "query", False),
        ("available", "query", False),
    }
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/CustomerRecommendations"}


def _refund(n: int, customer: str, country: str, product: str, day: int) -> dict[str, Any]:
    return build_event(
        "crm.order.refunded.v1",
        customer,
        {
            "refund_id": f"R{n}",
            "lines": [{"product_id": product, "quantity": 1, "unit_price": "1"}],
            "country": country,
        },
        source="shop",
        time=T0 + timedelta(days=day),
        event_id=f"refund-{n}",
    )


@pytest.mark.parametrize("batch", [1, 3, 100])
async def test_refunds_count_against_trending_whatever_the_batches(
    pool: asyncpg.Pool, batch: int
) -> None:
    """C2 (GB) returns the JAM of their day-1 order on day 6, folded before any order; C4 (FR,
    vip) returns the BOWL of their day-3 order on day 7. Each refund subtracts a purchase's
    weight at its own time from everyone, its country and its customer's segments."""
    events = _events()
    segment_at = next(n for n, e in enumerate(events) if e["type"] == "crm.segment.entered.v1")
    events.insert(0, _refund(1, "C2", "GB", "JAM", day=6))
    events.insert(segment_at + 2, _refund(2, "C4", "FR", "BOWL", day=7))
    await fold(pool, events, batch, job_every=1)
    _, ranks = await _state(pool)
    # JAM: days 0, 1, 2, 5 less day 6 falls below TEA (days 0 to 3); BOWL, refunded after its
    # only purchase, is below zero and trends nowhere.
    assert ranks[""] == ["TEA", "JAM", "SEED", "CUP"]
    assert ranks["country:GB"] == ["TEA", "JAM"]
    assert ranks["country:FR"] == ["TEA", "SEED", "CUP", "JAM"]
    assert ranks["segment:vip"] == ["SEED", "TEA"]

    def weight(day: int) -> int:
        return trending.weight(T0 + timedelta(days=day), trending.DEFAULT_HALF_LIFE_DAYS)

    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT scope, product_id, score, purchases FROM trending")
    stored = {
        (row["scope"], row["product_id"]): (int(row["score"]), row["purchases"]) for row in rows
    }
    assert stored[("", "JAM")] == (sum(map(weight, (0, 1, 2, 5))) - weight(6), 4)
    assert stored[("country:GB", "JAM")] == (sum(map(weight, (0, 1, 5))) - weight(6), 3)
    assert stored[("", "BOWL")] == (weight(3) - weight(7), 1)
    assert stored[("segment:vip", "BOWL")] == (weight(3) - weight(7), 1)
