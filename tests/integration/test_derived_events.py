"""Derived events and the replayable clock, on the real broker and database.

The profile service derives "lapsed" segment changes (no purchase for 30 days by the clock's
ticks) and publishes them through its outbox; the broadcast service folds them. Workers are
SIGKILLed while they derive and publish, and the profile is rebuilt from offset 0: every derived
event reaches Kafka once or more under one id, and every projection equals the independent fold.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_shared.contracts.events import SEGMENT_ENTERED, SEGMENT_LEFT
from crm_shared.ops import launcher
from tests.integration.helpers import (
    drop_and_rebuild,
    eventually,
    fetch,
    kill_and_restart,
    read_topic,
    unique,
)
from tests.integration.test_crash_recovery import publish

pytestmark = pytest.mark.integration

CUSTOMERS = 1_500
KILLED = [launcher.BY_NAME["profile-worker"], launcher.BY_NAME["broadcast-worker"]]


def _order(customer: str, order_id: str, when: datetime) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": order_id,
        "source": "shop",
        "type": "crm.order.placed.v1",
        "subject": customer,
        "time": when.isoformat(),
        "data": {
            "order_id": order_id,
            "lines": [{"product_id": "P-1", "quantity": 1, "unit_price": "9.99"}],
        },
    }


def expected_memberships(customers: list[str]) -> dict[str, tuple[bool, int]]:
    """Everyone bought 40+ days ago and lapsed (version 1); every other customer then bought
    again today and left the segment (version 2)."""
    return {c: (False, 2) if n % 2 == 0 else (True, 1) for n, c in enumerate(customers)}


async def memberships(dsn_base: str, service: str, prefix: str) -> dict[str, tuple[bool, int]]:
    """The 'lapsed' memberships of the test's customers as one service's database holds them."""
    rows = await fetch(
        f"{dsn_base}/crm_{service}",
        "SELECT customer_id, member, version FROM segment_memberships"
        " WHERE segment = 'lapsed' AND customer_id LIKE $1",
        f"{prefix}%",
    )
    return {r["customer_id"]: (r["member"], r["version"]) for r in rows}


def published_changes(bootstrap: str, prefix: str) -> dict[str, dict[int, set[tuple[str, str]]]]:
    """Per customer and version: the distinct (type, id) published on crm.segments."""
    found: dict[str, dict[int, set[tuple[str, str]]]] = defaultdict(lambda: defaultdict(set))
    for record in read_topic(bootstrap, "crm.segments"):
        event = json.loads(record.value)
        if event["subject"].startswith(prefix):
            assert record.key == event["subject"].encode()
            found[event["subject"]][event["data"]["version"]].add((event["type"], event["id"]))
    return found


async def test_derived_events_survive_sigkill_and_a_rebuild_derives_the_same(
    platform: dict[str, str],
) -> None:
    bootstrap, base = platform["CRM_KAFKA_BOOTSTRAP"], platform["CRM_PG_DSN_BASE"]
    prefix = unique("lapse")
    customers = [f"{prefix}-{n:05d}" for n in range(CUSTOMERS)]
    now = datetime.now(UTC)
    expected = expected_memberships(customers)

    # Phase 1: old purchases; everyone lapses, at once or at their partition's next tick.
    old = [
        _order(c, f"{c}-old", now - timedelta(days=40 + n % 20)) for n, c in enumerate(customers)
    ]
    publisher = threading.Thread(target=publish, args=(bootstrap, old, 500))
    publisher.start()
    try:
        await eventually(
            lambda: memberships(base, "profile", prefix),
            lambda found: len(found) > CUSTOMERS // 5,
            what="the profile to be deriving lapses",
        )
        await kill_and_restart(platform, KILLED)
    finally:
        publisher.join()
    await eventually(
        lambda: memberships(base, "profile", prefix),
        lambda found: len(found) == CUSTOMERS,
        within=120,
        what="every customer to lapse",
    )

    # Phase 2: half of them buy again today and leave the segment.
    fresh = [_order(c, f"{c}-new", now) for n, c in enumerate(customers) if n % 2 == 0]
    publisher = threading.Thread(target=publish, args=(bootstrap, fresh, 500))
    publisher.start()
    try:
        await eventually(
            lambda: memberships(base, "profile", prefix),
            lambda found: sum(not member for member, _ in found.values()) > CUSTOMERS // 10,
            what="the profile to be deriving departures",
        )
        await kill_and_restart(platform, KILLED)
    finally:
        publisher.join()

    live = await eventually(
        lambda: memberships(base, "profile", prefix),
        lambda found: found == expected,
        within=120,
        what="the profile to equal the independent fold",
    )
    assert live == expected
    folded = await eventually(
        lambda: memberships(base, "broadcast", prefix),
        lambda found: found == expected,
        within=120,
        what="the broadcast service to fold every derived event",
    )
    assert folded == expected

    changes = published_changes(bootstrap, prefix)
    for customer, (_, version) in expected.items():
        history = changes[customer]
        assert sorted(history) == list(range(1, version + 1)), customer
        for number, published in history.items():
            assert len(published) == 1, f"{customer} v{number}: copies with other ids {published}"
            ((event_type, _),) = published
            assert event_type == (SEGMENT_ENTERED if number % 2 else SEGMENT_LEFT)
    ids_before = {c: {v: p for v, p in h.items()} for c, h in changes.items()}

    # Rebuild the profile from offset 0: the same memberships, and only the same derived ids.
    await drop_and_rebuild(platform, "profile")
    rebuilt = await eventually(
        lambda: memberships(base, "profile", prefix),
        lambda found: found == live,
        within=240,
        what="the rebuilt profile to equal the live one",
    )
    assert rebuilt == live
    outbox_empty = await eventually(
        lambda: fetch(f"{base}/crm_profile", "SELECT count(*) AS n FROM outbox"),
        lambda rows: rows[0]["n"] == 0,
        what="the rebuilt profile's outbox to be relayed",
    )
    assert outbox_empty[0]["n"] == 0
    await asyncio.sleep(1)
    after = published_changes(bootstrap, prefix)
    assert {c: {v: p for v, p in h.items()} for c, h in after.items()} == ids_before
