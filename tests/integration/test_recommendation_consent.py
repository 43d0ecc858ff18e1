"""Consent to personalisation through Kafka, the recommendation worker and its API: a customer's
list is published on crm.recommendations with their personal picks; a revocation (v2) makes the
API's answer and the published list popular goods, and a new grant (v1) makes both personal
again, each publication with the next version of the customer's list."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from crm_shared.contracts.events import RECOMMENDATIONS_REFRESHED
from crm_shared.contracts.sdk import EventPublisher
from crm_shared.contracts.topics import RECOMMENDATIONS
from tests.integration.helpers import (
    create_api_key,
    eventually,
    gateway_url,
    get_json,
    read_topic,
    service_auth,
    unique,
)
from tests.integration.test_recommendation_api import _order

pytestmark = pytest.mark.integration

DECIDED = datetime(2024, 7, 1, 9, 0, tzinfo=UTC)


async def _published(platform: dict[str, str], customer: str) -> list[dict[str, Any]]:
    """The lists published for a customer so far, oldest first (their events' data)."""
    records = read_topic(platform["CRM_KAFKA_BOOTSTRAP"], RECOMMENDATIONS.name)
    documents = [json.loads(record.value) for record in records if record.key == customer.encode()]
    assert {document["type"] for document in documents} <= {RECOMMENDATIONS_REFRESHED}
    return sorted((document["data"] for document in documents), key=lambda data: data["version"])


async def test_revoking_and_granting_consent_switch_the_api_and_the_published_list(
    platform: dict[str, str],
) -> None:
    run = unique("consent")
    jam, tea, mug = (f"{run}-{name}" for name in ("JAM", "TEA", "MUG"))
    me = f"{run}-me"
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as publisher:
        for n in range(4):
            _order(publisher, f"{run}-c{n}", n, jam, tea, mug)
        _order(publisher, me, 10, jam)
    service = f"http://127.0.0.1:{platform['CRM_RECOMMENDATION_API_PORT']}"
    scopes = "recommendations:read,recommendations:train"
    reader = {"Authorization": "Bearer " + create_api_key(platform, f"{run}-r", scopes)}
    # A model that knows my purchases (whatever earlier tests trained does not), asked for once
    # the purchases are folded (JAM's similar items show them).
    await eventually(
        lambda: get_json(f"{gateway_url(platform)}/v1/products/{jam}/similar", headers=reader),
        lambda r: r[0] == 200 and r[1]["strategy"] == "bought-together",
        what="the purchases folded",
    )
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=5) as client:
        asked = await client.post("/v1/recommendations/model/retrain", headers=reader)
        assert asked.status_code == 202, asked.text
        request_id = asked.json()["request_id"]
        await eventually(
            lambda: get_json(
                f"{gateway_url(platform)}/v1/recommendations/model/retrain/{request_id}",
                headers=reader,
            ),
            lambda r: r[0] == 200 and r[1]["version"] is not None,
            within=300,
            what="a model trained on my purchases",
        )

    async def mine() -> tuple[int, Any]:
        return await get_json(
            f"{gateway_url(platform)}/v1/customers/{me}/recommendations", headers=reader
        )

    async def my_lists() -> list[dict[str, Any]]:
        return await _published(platform, me)

    _, personal = await eventually(
        mine,
        lambda r: r[0] == 200 and r[1]["strategy"] == "personal",
        within=120,
        what="my personal picks",
    )
    assert {tea, mug} <= {pick["product_id"] for pick in personal["recommendations"]}
    # The picks job may publish my list of popular goods before the swap publishes my picks.
    lists = await eventually(
        my_lists,
        lambda found: bool(found) and found[-1]["personalised"],
        within=30,
        what="my personal list published",
    )
    assert lists[-1]["model_version"] is not None
    assert {pick["product_id"] for pick in lists[-1]["picks"]} >= {tea, mug}
    assert jam not in {product["product_id"] for product in lists[-1]["new_products"]}

    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="web-site") as publisher:
        publisher.publish(
            "crm.consent.recorded.v2",
            me,
            {
                "purpose": "personalisation",
                "state": "revoked",
                "capture_method": "preference_centre",
                "wording_version": "2024-06",
            },
            time=DECIDED,
            event_id=f"{me}-revoked",
        )
    _, popular = await eventually(
        mine,
        lambda r: r[0] == 200 and r[1]["strategy"] == "popular",
        within=30,
        what="my picks to become popular goods",
    )
    assert {pick["reason"]["kind"] for pick in popular["recommendations"]} == {"popular"}
    status, direct = await get_json(
        f"{service}/customers/{me}/recommendations", headers=service_auth(platform)
    )
    assert (status, direct["strategy"]) == (200, "popular")
    refused = await eventually(
        my_lists,
        lambda found: not found[-1]["personalised"],
        within=30,
        what="my list published again without personalisation",
    )
    # Newer than my personal list; the picks job may have published another list in between.
    assert refused[-1]["version"] > lists[-1]["version"]
    assert len({found["version"] for found in refused}) == len(refused)  # no version used twice
    assert {pick["reason"] for pick in refused[-1]["picks"]} == {"popular"}

    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="call-centre") as publisher:
        publisher.publish(
            "crm.consent.granted.v1",
            me,
            {"purpose": "personalisation"},
            time=DECIDED + timedelta(days=1),
            event_id=f"{me}-granted",
        )
    await eventually(
        mine,
        lambda r: r[0] == 200 and r[1]["strategy"] == "personal",
        within=30,
        what="my personal picks again",
    )
    granted = await eventually(
        my_lists,
        lambda found: found[-1]["personalised"],
        within=30,
        what="my list published again with personalisation",
    )
    assert granted[-1]["version"] > refused[-1]["version"]
    assert len({found["version"] for found in granted}) == len(granted)
