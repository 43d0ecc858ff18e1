"""The served model through Kafka, the recommendation service and the gateway: a retrain request
swaps in a version (the EASE blend) with every customer's picks; a customer's own purchase, and
its cancellation, refresh their picks;
similar items change within two seconds of a purchase; every answer names the model version and
its training time; the gateway's routes need the recommendation scopes."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from crm_shared.contracts.sdk import EventPublisher
from recommendation_service.evaluation import BLEND_WEIGHTS
from recommendation_service.models import EaseParameters
from recommendation_service.projection import is_goods
from recommendation_service.serving import PICKS_KEPT
from tests.integration.helpers import (
    create_api_key,
    eventually,
    gateway_url,
    get_json,
    service_auth,
    unique,
)
from tests.integration.test_recommendation_api import _order

pytestmark = pytest.mark.integration

T0 = datetime(2024, 6, 1, 9, 0, tzinfo=UTC)


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["product_id"] for item in items]


def _stamped(body: dict[str, Any]) -> bool:
    """Whether an answer names a model version and its training time."""
    model = body["model"]
    return isinstance(model["version"], int) and datetime.fromisoformat(model["trained_at"]) < (
        datetime.now(UTC) + timedelta(seconds=5)
    )


async def test_picks_similar_items_and_retraining_through_the_gateway(
    platform: dict[str, str],
) -> None:
    run = unique("served")
    jam, tea, mug = (f"{run}-{name}" for name in ("JAM", "TEA", "MUG"))
    buyers = [f"{run}-c{i}" for i in range(4)]
    me, stranger = f"{run}-me", f"{run}-nobody"
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as publisher:
        for n, buyer in enumerate(buyers):
            _order(publisher, buyer, n, jam, tea, "POST")
        _order(publisher, buyers[0], 10, jam, mug)
        _order(publisher, buyers[1], 11, jam, mug)
        _order(publisher, me, 20, jam)
    gateway = gateway_url(platform)
    reader = {
        "Authorization": "Bearer "
        + create_api_key(platform, f"{run}-r", "recommendations:read,recommendations:train")
    }
    service = f"http://127.0.0.1:{platform['CRM_RECOMMENDATION_API_PORT']}"

    async def similar_to_jam() -> tuple[int, Any]:
        return await get_json(f"{gateway}/v1/products/{jam}/similar?limit=5", headers=reader)

    _, similar = await eventually(
        similar_to_jam,
        lambda r: (
            r[0] == 200 and r[1]["strategy"] == "bought-together" and len(r[1]["similar"]) == 2
        ),
        what="jam's similar items through the gateway",
    )
    assert _ids(similar["similar"]) == [tea, mug]
    assert similar["similar"][0]["reason"] == {
        "kind": "bought-together",
        "product_id": jam,
        "text": f"bought together with {jam} by 4 customers",
    }

    # Retraining on request: the next version answers it, and it is the one served.
    async with httpx.AsyncClient(timeout=5) as client:
        asked = await client.post(f"{gateway}/v1/recommendations/model/retrain", headers=reader)
    assert asked.status_code == 202, asked.text
    request_id = asked.json()["request_id"]
    _, answered = await eventually(
        lambda: get_json(
            f"{gateway}/v1/recommendations/model/retrain/{request_id}", headers=reader
        ),
        lambda r: r[0] == 200 and r[1]["version"] is not None,
        within=300,
        what="the retrain request to be answered",
    )
    status, model = await get_json(f"{gateway}/v1/recommendations/model", headers=reader)
    assert status == 200 and model["version"] >= answered["version"]
    assert model["parameters"]["als"]["factors"] > 0
    assert model["parameters"]["blend_weights"] == BLEND_WEIGHTS
    assert model["parameters"]["ease"] == asdict(EaseParameters())
    assert model["metrics"]["customers"] >= len(buyers) + 1

    # My picks were computed with that version, and say why: JAM's buyers bought TEA and MUG.
    # All the picks kept (not the first ten): the database holds other tests' purchases too, and
    # the blend may rank their products between TEA and MUG.
    async def my_picks() -> tuple[int, Any]:
        return await get_json(
            f"{gateway}/v1/customers/{me}/recommendations?limit={PICKS_KEPT}", headers=reader
        )

    _, mine = await eventually(
        my_picks,
        lambda r: r[0] == 200 and r[1]["strategy"] == "personal",
        what="my personal picks",
    )
    assert _stamped(mine) and mine["model"]["version"] >= answered["version"]
    picks = {pick["product_id"]: pick for pick in mine["recommendations"]}
    assert jam not in picks and all(is_goods(product) for product in picks)
    assert picks[tea]["reason"]["kind"] == "bought-together"
    assert picks[tea]["reason"]["product_id"] == jam
    assert mug in picks
    assert all(pick["reason"]["text"] for pick in picks.values())
    status, direct = await get_json(
        f"{service}/customers/{me}/recommendations?limit={PICKS_KEPT}",
        headers=service_auth(platform),
    )
    assert (status, direct) == (200, mine)  # the gateway passes the service's answer on

    # My own purchase refreshes my picks, with the same version: TEA is no longer offered.
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as publisher:
        _order(publisher, me, 21, tea)
    _, refreshed = await eventually(
        my_picks,
        lambda r: tea not in _ids(r[1]["recommendations"]),
        within=30,
        what="my picks to leave out what I just bought",
    )
    assert refreshed["strategy"] == "personal"

    # A cancelled order counts as not bought: MUG leaves my picks with my order of it and comes
    # back when the order is cancelled.
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as publisher:
        _order(publisher, me, 22, mug)
    await eventually(
        my_picks,
        lambda r: mug not in _ids(r[1]["recommendations"]),
        within=30,
        what="my picks to leave out the mug I ordered",
    )
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as publisher:
        publisher.publish(
            "crm.order.cancelled.v1",
            me,
            {"order_id": f"{me}-22", "reason": "changed my mind"},
            time=T0 + timedelta(minutes=23),
            event_id=f"{me}-cancel-22",
        )
    await eventually(
        my_picks,
        lambda r: mug in _ids(r[1]["recommendations"]),
        within=30,
        what="the mug back in my picks once its order is cancelled",
    )

    # A customer the model has nothing for gets popular goods, stamped with the version served.
    status, theirs = await get_json(
        f"{gateway}/v1/customers/{stranger}/recommendations?limit=3", headers=reader
    )
    assert (status, theirs["strategy"]) == (200, "popular") and _stamped(theirs)
    assert len(theirs["recommendations"]) == 3
    assert {pick["reason"]["kind"] for pick in theirs["recommendations"]} == {"popular"}

    # A purchase changes the similar items within two seconds of being folded.
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as publisher:
        _order(publisher, buyers[2], 30, mug)
    await eventually(
        lambda: get_json(f"{gateway}/v1/products/{mug}/also-bought", headers=reader),
        lambda r: r[0] == 200 and r[1]["product"]["orders"] == 3,
        what="the new order to be folded",
    )
    _, changed = await eventually(
        similar_to_jam,
        lambda r: "by 3 customers" in r[1]["similar"][1]["reason"]["text"],
        what="mug's third co-buyer with jam in jam's similar items",
    )
    assert _ids(changed["similar"]) == [tea, mug] and _stamped(changed)

    # Popular goods and "also bought" through the gateway: what the service answers.
    for path in ("/products/popular?limit=5", f"/products/{jam}/also-bought?limit=5"):
        through = await get_json(f"{gateway}/v1{path}", headers=reader)
        assert through == await get_json(f"{service}{path}", headers=service_auth(platform))
        assert through[0] == 200
    status, missing = await get_json(f"{gateway}/v1/products/{run}-none/similar", headers=reader)
    assert status == 404 and "not known" in missing["error"]["message"]
    status, _ = await get_json(f"{gateway}/v1/products/{jam}/similar?limit=0", headers=reader)
    assert status == 422


async def test_recommendation_routes_need_their_scopes(platform: dict[str, str]) -> None:
    gateway = gateway_url(platform)
    reader = {
        "Authorization": "Bearer "
        + create_api_key(platform, unique("reco-reader"), "recommendations:read")
    }
    other = {"Authorization": "Bearer " + create_api_key(platform, unique("c"), "customers:read")}
    for path in (
        "/v1/customers/C1/recommendations",
        "/v1/products/popular",
        "/v1/products/85123A/similar",
        "/v1/products/85123A/also-bought",
        "/v1/recommendations/model",
    ):
        status, body = await get_json(f"{gateway}{path}", headers=other)
        assert status == 403 and "recommendations:read" in body["error"]["message"], path
    async with httpx.AsyncClient(timeout=5) as client:
        refused = await client.post(f"{gateway}/v1/recommendations/model/retrain", headers=reader)
    assert refused.status_code == 403 and "recommendations:train" in refused.text
    status, _ = await get_json(f"{gateway}/v1/recommendations/model/retrain/1", headers=reader)
    assert status == 403
