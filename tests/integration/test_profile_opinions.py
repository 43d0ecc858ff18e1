"""What customers tell of the brand and its competitors, through the real gateway, broker and
database: statements ingested by the gateway come back on the customer and in the counts across
customers, which ask for their scopes; a statement that cannot be counted is refused with why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from crm_shared.contracts.events import build_event
from tests.integration.helpers import create_api_key, eventually, gateway_url, unique

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC) - timedelta(days=3)


def _statement(kind: str, customer: str, hours: int, data: dict[str, Any]) -> dict[str, Any]:
    return build_event(
        f"crm.customer.{kind}.v1",
        customer,
        data,
        source="survey-tool",
        time=T0 + timedelta(hours=hours),
        event_id=f"{customer}-{kind}-{hours}",
    )


async def test_opinions_are_kept_on_the_customer_and_counted_across(
    platform: dict[str, str],
) -> None:
    prefix = unique("voice")
    brand = f"Rival {prefix}"  # a competitor no other test names, so its counts are this test's
    first, second = f"{prefix}-1", f"{prefix}-2"
    statements = [
        _statement("dislike.stated", first, 1, {"aspect": "delivery", "captured_via": "call"}),
        _statement(
            "competitor_purchase.reported",
            first,
            2,
            {"brand": brand, "category": "mugs", "reason": "price"},
        ),
        _statement(
            "competitor_purchase.reported",
            second,
            3,
            {"brand": f"  {brand.upper()} ", "reason": "availability"},
        ),
        _statement(
            "purchase.declined",
            second,
            4,
            {"reason": "prefers_competitor", "product_id": "P-7", "competitor_brand": brand},
        ),
    ]
    invalid = _statement("dislike.stated", first, 5, {"aspect": "price"})
    invalid["data"] = {"aspect": "the weather"}
    writer = create_api_key(platform, "survey", "events:write", sources="survey-tool")
    analyst = create_api_key(platform, "voice-analyst", "customers:read,analytics:read")
    reader = create_api_key(platform, "voice-reader", "customers:read")
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as gateway:
        posted = await gateway.post(
            "/v1/events",
            json={"events": [*statements, invalid]},
            headers={"Authorization": f"Bearer {writer}"},
        )
        assert posted.status_code == 200, posted.text
        body = posted.json()
        assert (body["accepted"], body["rejected"]) == (4, 1)
        assert {r["topic"] for r in body["results"][:4]} == {"crm.customers"}
        assert "aspect" in body["results"][4]["reason"]

        as_analyst = {"Authorization": f"Bearer {analyst}"}
        answer = await eventually(
            lambda: gateway.get(f"/v1/customers/{second}/opinions", headers=as_analyst),
            lambda found: found.status_code == 200 and len(found.json()["opinions"]) == 2,
            what="the second customer's two statements",
        )
        newest, older = answer.json()["opinions"]
        assert (newest["kind"], newest["topic"], newest["competitor"], newest["about"]) == (
            "declined",
            "prefers_competitor",
            brand,
            "P-7",
        )
        assert (older["kind"], older["reason"], older["source"]) == (
            "competitor_purchase",
            "availability",
            "survey-tool",
        )

        summary = await gateway.get(
            "/v1/analytics/opinions",
            params={"since": T0.isoformat()},
            headers=as_analyst,
        )
        assert summary.status_code == 200, summary.text
        rival = [
            c
            for c in summary.json()["counts"]
            if c["kind"] == "competitor_purchase" and c["topic"].casefold() == brand.casefold()
        ]
        assert [(c["customers"], c["statements"], c["reasons"]) for c in rival] == [
            (2, 2, {"price": 1, "availability": 1})
        ]

        naive = await gateway.get(
            "/v1/analytics/opinions", params={"since": "2026-01-01T00:00"}, headers=as_analyst
        )
        assert naive.status_code == 422 and "UTC offset" in naive.text
        missing = await gateway.get(f"/v1/customers/{prefix}-9/opinions", headers=as_analyst)
        assert missing.status_code == 404 and "no opinion" in missing.text
        backwards = await gateway.get(
            "/v1/analytics/opinions",
            params={"since": T0.isoformat(), "until": (T0 - timedelta(days=1)).isoformat()},
            headers=as_analyst,
        )
        assert (backwards.status_code, backwards.json()["counts"]) == (200, [])
        refused = await gateway.get(
            "/v1/analytics/opinions", headers={"Authorization": f"Bearer {reader}"}
        )
        assert refused.status_code == 403 and "analytics:read" in refused.text
