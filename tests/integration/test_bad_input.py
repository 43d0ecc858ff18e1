"""Bad records land in the dead-letter topic with their reason; the good ones around them apply."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from kafka import KafkaProducer

from crm_shared import deadletter, launcher
from crm_shared.events import build_event
from tests.integration.helpers import eventually, get_json, read_topic, unique

pytestmark = pytest.mark.integration

ORDER_CONSUMERS = ("profile", "interaction", "recommendation")


def _raw(document: dict[str, object]) -> bytes:
    """Bytes as a foreign producer would send them: no validation, no size limit."""
    return json.dumps(document).encode()


def _order(customer: str, n: int, **data_overrides: object) -> dict[str, object]:
    document = build_event(
        "crm.order.placed.v1",
        customer,
        {"order_id": f"O{n}", "lines": [{"product_id": "P1", "quantity": 1, "unit_price": "10"}]},
        source="test-bad-input",
        time=datetime(2024, 1, 1, tzinfo=UTC),
        event_id=f"{customer}-{n}",
    )
    document["data"] = {**document["data"], **data_overrides}  # type: ignore[dict-item]
    return document


async def test_each_kind_of_bad_record_is_dead_lettered_and_the_rest_applied(
    platform: dict[str, str],
) -> None:
    customer = unique("bad")
    key = customer.encode()
    without_subject = _order(customer, 91)
    del without_subject["subject"]
    bad_records: dict[str, tuple[bytes, str]] = {
        "malformed json": (_raw(_order(customer, 90))[:-7], "invalid envelope"),
        "missing subject": (json.dumps(without_subject).encode(), "subject"),
        "wrong schema": (
            _raw(_order(customer, 92, lines=[{"product_id": "P1", "quantity": "many"}])),
            "invalid data of crm.order.placed.v1",
        ),
        "unknown type": (
            _raw({**_order(customer, 93), "type": "crm.order.teleported.v1"}),
            "unknown event type 'crm.order.teleported.v1'",
        ),
        "2 MB payload": (
            _raw(_order(customer, 94, note="x" * (2 * 1024 * 1024))),
            "event too large",
        ),
    }
    workers = [launcher.BY_NAME[f"{consumer}-worker"] for consumer in ORDER_CONSUMERS]
    pids = {worker: launcher.running_pid(worker, platform) for worker in workers}
    producer = KafkaProducer(
        bootstrap_servers=platform["CRM_KAFKA_BOOTSTRAP"],
        acks="all",
        max_request_size=5 * 1024 * 1024,
    )
    try:
        good = 0
        for raw, _ in bad_records.values():
            producer.send("crm.orders", key=key, value=_raw(_order(customer, good)))
            producer.send("crm.orders", key=key, value=raw)
            good += 1
        producer.send("crm.orders", key=key, value=_raw(_order(customer, good)))
        good += 1
        producer.flush()
    finally:
        producer.close()

    profile = f"http://127.0.0.1:{platform['CRM_PROFILE_API_PORT']}/customers/{customer}"
    await eventually(
        lambda: get_json(profile),
        lambda r: r[0] == 200 and r[1]["purchases"]["orders"] == good,
        what=f"all {good} valid orders around the bad records to be applied",
    )

    def letters_for_customer() -> list[dict[str, str]]:
        found = []
        for record in read_topic(platform["CRM_KAFKA_BOOTSTRAP"], "crm.deadletter"):
            if record.key == key:
                found.append({**deadletter.read_headers(record.headers), "value": record.value})
        return found

    async def probe() -> list[dict[str, str]]:
        return letters_for_customer()

    letters = await eventually(
        probe,
        lambda found: len(found) >= len(bad_records) * len(ORDER_CONSUMERS),
        what="every consumer of crm.orders to dead-letter every bad record",
    )
    for consumer in ORDER_CONSUMERS:
        mine = [letter for letter in letters if letter[deadletter.CONSUMER] == consumer]
        assert len(mine) == len(bad_records), f"{consumer} dead-lettered {len(mine)} records"
        originals = {letter["value"]: letter for letter in mine}
        for kind, (raw, reason) in bad_records.items():
            assert raw in originals, (
                f"{consumer}: the {kind} record is not in the dead-letter topic"
            )
            letter = originals[raw]
            assert reason in letter[deadletter.REASON], f"{kind}: {letter[deadletter.REASON]}"
            assert letter[deadletter.ORIGIN_TOPIC] == "crm.orders"
            assert int(letter[deadletter.ORIGIN_OFFSET]) >= 0

    for worker, pid in pids.items():
        assert pid is not None, f"{worker.name} was not running"
        assert launcher.running_pid(worker, platform) == pid, f"{worker.name} died (restarted)"
