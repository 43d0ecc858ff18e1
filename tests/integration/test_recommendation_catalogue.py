"""The catalogue, filters and trending through Kafka, the recommendation service and the gateway:
catalogue records on crm.catalogue narrow customers' recommendations and similar items; trending
is kept per country and per segment (from crm.segments); a bad catalogue record is dead-lettered
with its reason; the new route needs the recommendations:read scope."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer

from crm_shared.contracts import deadletter
from crm_shared.contracts.sdk import EventPublisher
from tests.integration.helpers import (
    create_api_key,
    eventually,
    gateway_url,
    read_topic,
    unique,
)

pytestmark = pytest.mark.integration

T0 = datetime(2024, 7, 1, 9, 0, tzinfo=UTC)


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["product_id"] for item in items]


def _bad_catalogue_record(product: str) -> bytes:
    """A catalogue record with a negative price: valid JSON, not a valid event."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"{product}-bad",
            "source": "pim",
            "type": "crm.product.catalogued.v1",
            "subject": product,
            "time": T0.isoformat(),
            "data": {"product_id": product, "name": "bad", "price": "-1", "available": True},
        }
    ).encode()


async def test_catalogue_filters_and_trending_through_the_gateway(
    platform: dict[str, str],
) -> None:
    run = unique("cat")
    jam, tea, mug, ship = (f"{run}-{name}" for name in ("JAM", "TEA", "MUG", "SHIP"))
    kitchen, segment = f"kitchen-{run}", unique("vip")
    buyers, me = [f"{run}-c{i}" for i in range(3)], f"{run}-me"
    catalogue = {
        jam: {"price": "3.00", "available": True},
        tea: {"price": "2.00", "available": True},
        mug: {"price": "8.00", "available": False},
        ship: {"price": "4.95", "available": True, "kind": "postage"},
    }
    bootstrap = platform["CRM_KAFKA_BOOTSTRAP"]
    with EventPublisher(bootstrap, source="pim") as pim:
        for n, (product, fields) in enumerate(catalogue.items()):
            pim.publish(
                "crm.product.catalogued.v1",
                product,
                {"product_id": product, "name": product.lower(), "category": kitchen, **fields},
                time=T0 + timedelta(minutes=n),
            )
    with EventPublisher(bootstrap, source="profile-service") as profile:
        profile.publish(
            "crm.segment.entered.v1",
            buyers[0],
            {"segment": segment, "version": 1, "reason": "test"},
            time=T0 + timedelta(minutes=5),
        )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        bad = _bad_catalogue_record(f"{run}-BAD")
        producer.send("crm.catalogue", key=f"{run}-BAD".encode(), value=bad).get(timeout=30)
    finally:
        producer.close()
    with EventPublisher(bootstrap, source="shop") as shop:
        for n, customer in enumerate([*buyers, me]):
            products = [jam] if customer == me else [jam, tea, mug, ship]
            shop.publish(
                "crm.order.placed.v1",
                customer,
                {
                    "order_id": f"{customer}-1",
                    "country": "GB",
                    "lines": [
                        {"product_id": p, "quantity": 1, "unit_price": "1.00"} for p in products
                    ],
                },
                time=T0 + timedelta(hours=1, minutes=n),
            )

    reader = {
        "Authorization": "Bearer " + create_api_key(platform, f"{run}-r", "recommendations:read")
    }
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as client:

        async def get(path: str, headers: dict[str, str] = reader) -> tuple[int, Any]:
            answer = await client.get(path, headers=headers)
            return answer.status_code, answer.json()

        async def in_segment() -> tuple[int, Any]:
            return await get(f"/v1/products/trending?segment={segment}")

        _, trending = await eventually(
            in_segment,
            lambda r: r[0] == 200 and len(r[1]["products"]) == 2,
            what="the segment's trending goods",
        )
        # Never the postage (by its catalogue kind) nor the mug (out of stock); ties by id.
        assert _ids(trending["products"]) == [jam, tea]
        assert {p["reason"]["text"] for p in trending["products"]} == {"popular in your segment"}

        async def in_gb() -> tuple[int, Any]:
            return await get("/v1/products/trending?country=GB&limit=100")

        _, gb = await eventually(
            in_gb,
            lambda r: [p["purchases"] for p in r[1]["products"] if p["product_id"] == jam] == [4],
            what="every purchase of the jam in GB",
        )
        ours = [p for p in gb["products"] if p["product_id"] in catalogue]
        assert _ids(ours) == [jam, tea]
        assert ours[0]["reason"]["text"] == "trending in GB"

        # Filters: popular goods of the category that the customer has not bought (or their
        # picks that match, topped up with them): never the jam they bought nor the postage.
        path = f"/v1/customers/{me}/recommendations?category={kitchen}"
        status, found = await get(path)
        assert status == 200 and set(_ids(found["recommendations"])) == {tea, mug}
        _, in_stock = await get(f"{path}&available=true")
        assert _ids(in_stock["recommendations"]) == [tea]
        status, refused = await get(f"{path}&min_price=5&max_price=2")
        assert status == 422 and "min_price 5 is above max_price 2" in refused["error"]["message"]

        async def similar_in_stock() -> tuple[int, Any]:
            return await get(f"/v1/products/{jam}/similar?category={kitchen}&available=true")

        _, similar = await eventually(
            similar_in_stock,
            lambda r: r[0] == 200 and r[1]["strategy"] == "bought-together",
            what="the jam's similar goods in stock",
        )
        assert _ids(similar["similar"]) == [tea]
        assert similar["similar"][0]["reason"]["kind"] == "bought-together"

        other = {
            "Authorization": "Bearer " + create_api_key(platform, f"{run}-c", "customers:read")
        }
        status, _ = await get("/v1/products/trending", headers=other)
        assert status == 403

    def letters() -> list[dict[str, str]]:
        return [
            deadletter.read_headers(record.headers)
            for record in read_topic(bootstrap, "crm.deadletter")
            if record.value == bad
        ]

    async def dead_lettered() -> list[dict[str, str]]:
        return letters()

    found = await eventually(  # the profile folds the catalogue too (its categories)
        dead_lettered,
        lambda found: (
            sorted(f[deadletter.CONSUMER] for f in found) == ["profile", "recommendation"]
        ),
        what="the bad record's dead letter from each service folding the catalogue, once",
    )
    for letter in found:
        assert letter[deadletter.ORIGIN_TOPIC] == "crm.catalogue"
        assert "price" in letter[deadletter.REASON]
