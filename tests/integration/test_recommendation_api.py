"""Every route of the recommendation API, through the running platform: orders published to
Kafka become popular products and "also bought" lists within seconds; postage and vouchers never
surface. The served model's routes (personal picks, similar items, the model, retraining), also
through the gateway with its scopes: test_recommendation_serving."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_shared.contracts.sdk import EventPublisher
from recommendation_service.projection import is_goods
from tests.integration.helpers import eventually, get_json, service_auth, unique

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
# (measured from the moment the fold has the order: the worker's own lag is not the job's)


def _order(publisher: EventPublisher, customer: str, n: int, *products: str) -> None:
    publisher.publish(
        "crm.order.placed.v1",
        customer,
        {
            "order_id": f"{customer}-{n}",
            "lines": [
                {"product_id": p, "quantity": 2, "unit_price": "1.50", "description": p.lower()}
                for p in products
            ],
        },
        time=T0 + timedelta(minutes=n),
        event_id=f"{customer}-order-{n}",
    )


async def test_popular_and_also_bought(
    platform: dict[str, str],
) -> None:
    run = unique("reco")
    jam, tea, mug, cup = (f"{run}-{name}" for name in ("JAM", "TEA", "MUG", "CUP"))
    buyers = [f"{run}-c{i}" for i in range(4)]
    customer = f"{run}-me"
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as publisher:
        for n, buyer in enumerate(buyers):
            _order(publisher, buyer, n, jam, tea, "POST", "gift_0001_20")
        _order(publisher, buyers[0], 10, jam, mug)
        _order(publisher, customer, 20, jam)
        publisher.publish(
            "crm.product.viewed.v1",
            customer,
            {"product_id": cup},
            time=T0 + timedelta(minutes=21),
            event_id=f"{customer}-view",
        )
    api = f"http://127.0.0.1:{platform['CRM_RECOMMENDATION_API_PORT']}"
    auth = service_auth(platform)

    async def also_bought(product: str) -> tuple[int, Any]:
        return await get_json(f"{api}/products/{product}/also-bought?limit=5", headers=auth)

    async def also_bought_jam() -> tuple[int, Any]:
        return await also_bought(jam)

    _, found = await eventually(
        also_bought_jam,
        lambda r: r[0] == 200 and r[1]["product"]["buyers"] == 5 and len(r[1]["also_bought"]) == 2,
        what="jam's buyers and neighbours",
    )
    assert found["product"] == {
        "product_id": jam,
        "description": jam.lower(),
        "orders": 6,
        "quantity": 12,
        "buyers": 5,
        "views": 0,
    }
    assert [(p["product_id"], p["co_buyers"]) for p in found["also_bought"]] == [
        (tea, 4),
        (mug, 1),
    ]
    # cosine: co-buyers / sqrt(buyers x buyers); jam has 5 buyers, tea 4, mug 1
    assert [p["similarity"] for p in found["also_bought"]] == pytest.approx(
        [4 / math.sqrt(5 * 4), 1 / math.sqrt(5 * 1)]
    )

    status, popular = await get_json(f"{api}/products/popular?limit=100", headers=auth)
    assert status == 200
    ranked = [(p["buyers"], p["product_id"]) for p in popular["products"]]
    assert [buyers for buyers, _ in ranked] == sorted((b for b, _ in ranked), reverse=True)
    assert all(is_goods(product) for _, product in ranked)  # POST, vouchers: never popular
    # Other tests' products share the broker: ours are listed where their buyers place them.
    ours = [(5, jam), (4, tea), (1, mug)]
    shown = [item for item in ours if len(ranked) < 100 or item[0] > ranked[-1][0]]
    assert [item for item in ranked if item in shown] == shown

    status, missing = await get_json(f"{api}/products/{run}-none/also-bought", headers=auth)
    assert status == 404 and "not known" in missing["error"]["message"]

    # A new purchase reaches "also bought" (how fast: `./crm bench-recommendations`, not a test).
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as publisher:
        _order(publisher, buyers[1], 30, mug)
    await eventually(
        lambda: also_bought(mug),
        lambda r: r[1]["product"]["orders"] == 2,
        what="the new order to be folded",
    )
    _, refreshed = await eventually(
        also_bought_jam,
        lambda r: (mug, 2) in [(p["product_id"], p["co_buyers"]) for p in r[1]["also_bought"]],
        what="mug's second co-buyer with jam",
    )
    assert [p["product_id"] for p in refreshed["also_bought"]] == [tea, mug]

    # A refund of everything bought is a negative signal: that buyer no longer counts.
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as publisher:
        publisher.publish(
            "crm.order.refunded.v1",
            buyers[0],
            {
                "refund_id": f"{buyers[0]}-r",
                "lines": [{"product_id": mug, "quantity": 2, "unit_price": "1.50"}],
            },
            time=T0 + timedelta(minutes=40),
            event_id=f"{buyers[0]}-refund",
        )
    await eventually(
        lambda: also_bought(mug),
        lambda r: r[1]["product"]["buyers"] == 1,
        what="the refund to be folded",
    )
    await eventually(
        also_bought_jam,
        lambda r: (mug, 1) in [(p["product_id"], p["co_buyers"]) for p in r[1]["also_bought"]],
        what="mug's refunded co-buyer to leave jam's list",
    )
