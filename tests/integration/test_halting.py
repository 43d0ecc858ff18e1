"""A projection whose database no longer fits its code stops consuming, says so (metric, log,
/healthz), dead-letters nothing, and resumes where it stopped once the database is fixed."""

from __future__ import annotations

import pytest

from crm_shared.contracts.deadletter import read_headers
from crm_shared.contracts.events import build_event
from tests.integration.helpers import (
    eventually,
    fetch,
    get_json,
    metric_value,
    read_topic,
    unique,
)
from tests.integration.test_crash_recovery import publish

pytestmark = pytest.mark.integration

ORDERS = 30
HALTED = 'crm_projection_halted{projection="profile"}'


def _orders(prefix: str) -> list[dict[str, object]]:
    return [
        build_event(
            "crm.order.placed.v1",
            f"{prefix}-{n}",
            {
                "order_id": f"{prefix}-o{n}",
                "lines": [{"product_id": "P-halt", "quantity": 2, "unit_price": "5.00"}],
            },
            source="shop",
        )
        for n in range(ORDERS)
    ]


async def _health(port: str) -> tuple[int, object]:
    return await get_json(f"http://127.0.0.1:{port}/healthz")


async def test_a_schema_mismatch_halts_the_worker_until_it_is_fixed(
    platform: dict[str, str],
) -> None:
    base, bootstrap = platform["CRM_PG_DSN_BASE"], platform["CRM_KAFKA_BOOTSTRAP"]
    port = platform["CRM_PROFILE_WORKER_METRICS_PORT"]
    profile, interaction = f"{base}/crm_profile", f"{base}/crm_interaction"
    prefix = unique("halt")
    assert (await _health(port))[0] == 200

    await fetch(profile, "ALTER TABLE purchase_totals RENAME COLUMN items TO items_renamed")
    try:
        publish(bootstrap, _orders(prefix), rate=1_000)
        _, body = await eventually(
            lambda: _health(port), lambda found: found[0] == 503, what="/healthz to say halted"
        )
        assert isinstance(body, dict) and body["status"] == "halted"
        assert "does not fit its code" in body["reason"] and "items" in body["reason"]
        assert await metric_value(port, HALTED) == 1.0
        # The other consumers of the same topic go on.
        await eventually(
            lambda: fetch(
                interaction,
                "SELECT count(*) AS n FROM timeline WHERE customer_id LIKE $1",
                f"{prefix}%",
            ),
            lambda rows: rows[0]["n"] == ORDERS,
            what="the interaction service to fold the orders",
        )
        totals = await fetch(
            profile,
            "SELECT count(*) AS n FROM purchase_totals WHERE customer_id LIKE $1",
            f"{prefix}%",
        )
        assert totals[0]["n"] == 0
    finally:
        await fetch(profile, "ALTER TABLE purchase_totals RENAME COLUMN items_renamed TO items")

    resumed = await eventually(
        lambda: fetch(
            profile,
            "SELECT count(*) AS n, sum(items) AS items FROM purchase_totals"
            " WHERE customer_id LIKE $1",
            f"{prefix}%",
        ),
        lambda rows: rows[0]["n"] == ORDERS,
        within=90,
        what="the profile to resume and fold every order",
    )
    assert resumed[0]["items"] == 2 * ORDERS
    assert (await _health(port))[0] == 200
    assert await metric_value(port, HALTED) == 0.0
    letters = [
        record
        for record in read_topic(bootstrap, "crm.deadletter")
        if prefix.encode() in (record.value or b"")
        and read_headers(record.headers).get("crm.consumer") == "profile"
    ]
    assert letters == [], "a halted projection dead-letters nothing"
