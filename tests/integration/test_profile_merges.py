"""Merging customers through the real gateway, broker and database: a merge published as an
event makes two records one person (the profile answers for the person, with both histories),
an identified record needs force, placeholders are refused, and an unmerge gives the record its
own history back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from crm_shared.contracts.events import build_event
from tests.integration.helpers import (
    create_api_key,
    eventually,
    gateway_url,
    read_topic,
    unique,
)
from tests.integration.test_crash_recovery import publish

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC) - timedelta(days=10)


def _event(kind: str, customer: str, hours: int, data: dict[str, Any]) -> dict[str, Any]:
    return build_event(
        kind,
        customer,
        data,
        source="shop",
        time=T0 + timedelta(hours=hours),
        event_id=f"{customer}-{kind}-{hours}",
    )


def _order(customer: str, hours: int, price: str) -> dict[str, Any]:
    data = {
        "order_id": f"{customer}-{hours}",
        "lines": [{"product_id": "P-1", "quantity": 1, "unit_price": price}],
    }
    return _event("crm.order.placed.v1", customer, hours, data)


async def test_merge_and_unmerge_through_the_gateway(platform: dict[str, str]) -> None:
    prefix = unique("merge")
    ann, guest, card = f"{prefix}-ann", f"{prefix}-guest", f"{prefix}-card"
    registered = "crm.customer.registered.v1"
    publish(
        platform["CRM_KAFKA_BOOTSTRAP"],
        [
            _event(registered, ann, 1, {"name": "Ann", "email": f"{prefix}@x.test"}),
            _event(registered, guest, 2, {"name": "Guest", "country": "Spain"}),
            _event(registered, card, 3, {"identifiers": {"loyalty": f"{prefix}-L1"}}),
            _order(ann, 4, "10"),
            _order(guest, 5, "25"),
            _order(guest, 6, "5"),
        ],
        rate=1_000,
    )
    merger = create_api_key(platform, "merger", "customers:read,customers:merge")
    reader = create_api_key(platform, "merge-reader", "customers:read")
    headers = {"Authorization": f"Bearer {merger}"}
    async with httpx.AsyncClient(
        base_url=gateway_url(platform), timeout=10, headers=headers
    ) as gateway:

        async def profile(customer: str) -> dict[str, Any]:
            """The profile part of the customer's 360."""
            answer = await gateway.get(f"/v1/customers/{customer}")
            return (answer.json()["profile"] or {}) if answer.status_code == 200 else {}

        await eventually(
            lambda: profile(guest),
            lambda found: found.get("purchases", {}).get("orders") == 2,
            what="the guest's orders",
        )
        merged = await gateway.post(
            f"/v1/customers/{ann}/merges", json={"customer_id": guest, "reason": "same card"}
        )
        assert merged.status_code == 202, merged.text
        assert merged.json()["type"] == "crm.customer.merged.v1"

        person = await eventually(
            lambda: profile(guest),
            lambda found: found.get("customer_id") == ann,
            what="the guest answering as Ann's person",
        )
        assert person["merged_ids"] == [guest]
        (gbp,) = person["purchases"]["by_currency"]
        assert (person["purchases"]["orders"], float(gbp["net_revenue"])) == (3, 40)
        assert (person["name"], person["email"], person["country"]) == (
            "Guest",  # registered later than Ann's name was set: the newest value wins
            f"{prefix}@x.test",
            "Spain",
        )

        refused = await gateway.post(f"/v1/customers/{ann}/merges", json={"customer_id": card})
        assert refused.status_code == 409
        assert "loyalty id" in refused.text and "force=true" in refused.text
        placeholder = await gateway.post(
            f"/v1/customers/{ann}/merges", json={"customer_id": "null"}
        )
        assert placeholder.status_code == 422 and "placeholder" in placeholder.text
        into_placeholder = await gateway.post(
            "/v1/customers/0/merges", json={"customer_id": f"{prefix}-nobody"}
        )
        assert into_placeholder.status_code == 422, into_placeholder.text
        assert "'0' is a placeholder" in into_placeholder.text
        itself = await gateway.post(f"/v1/customers/{ann}/merges", json={"customer_id": ann})
        assert itself.status_code == 422 and "itself" in itself.text
        forced = await gateway.post(
            f"/v1/customers/{ann}/merges", json={"customer_id": card, "force": True}
        )
        assert forced.status_code == 202, forced.text

        unmerged = await gateway.delete(f"/v1/customers/{ann}/merges/{guest}")
        assert unmerged.status_code == 202, unmerged.text
        alone = await eventually(
            lambda: profile(guest),
            lambda found: found.get("customer_id") == guest,
            what="the guest a person of its own again",
        )
        assert (alone["merged_ids"], alone["purchases"]["orders"]) == ([], 2)
        ann_now = await eventually(
            lambda: profile(ann),
            lambda found: found.get("merged_ids") == [card],
            what="Ann's person holding only the card's record",
        )
        assert ann_now["identifiers"] == {"loyalty": f"{prefix}-L1"}
        assert ann_now["purchases"]["orders"] == 1

        history = (await gateway.get(f"/v1/customers/{guest}/merges")).json()
        assert (history["person_id"], history["identified_by"]) == (guest, [])
        assert [(s["other_id"], s["merged"]) for s in history["statements"]] == [
            (guest, True),
            (card, True),
            (guest, False),
        ]

        forbidden = await gateway.post(
            f"/v1/customers/{ann}/merges",
            json={"customer_id": guest},
            headers={"Authorization": f"Bearer {reader}"},
        )
        assert forbidden.status_code == 403 and "customers:merge" in forbidden.text

    published = [
        json.loads(record.value)
        for record in read_topic(platform["CRM_KAFKA_BOOTSTRAP"], "crm.customers")
        if record.key == ann.encode()
    ]
    assert [e["type"] for e in published if e["type"] != "crm.customer.registered.v1"] == [
        "crm.customer.merged.v1",
        "crm.customer.merged.v1",
        "crm.customer.unmerged.v1",
    ]
