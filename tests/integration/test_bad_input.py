"""Bad records land in the dead-letter topic with their reason; the good ones around them apply."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import NamedTuple

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent as SdkEvent
from kafka import KafkaProducer

from crm_shared.contracts import deadletter
from crm_shared.contracts.events import build_event
from crm_shared.ops import launcher
from tests.integration.helpers import eventually, get_json, read_topic, service_auth, unique

pytestmark = pytest.mark.integration

ORDER_CONSUMERS = ("profile", "interaction", "recommendation")
T0 = datetime(2024, 1, 1, tzinfo=UTC)


class BadRecord(NamedTuple):
    value: bytes
    reason: str
    key: bytes | None
    headers: list[tuple[str, bytes]] | None = None


def _raw(document: dict[str, object]) -> bytes:
    """Bytes as a foreign producer would send them: no validation, no size limit."""
    return json.dumps(document).encode()


def _order(
    customer: str, n: int, *, time: datetime = T0, **data_overrides: object
) -> dict[str, object]:
    document = build_event(
        "crm.order.placed.v1",
        customer,
        {
            "order_id": f"{customer}-O{n}",
            "lines": [{"product_id": "P1", "quantity": 1, "unit_price": "10"}],
        },
        source="test-bad-input",
        time=time,
        event_id=f"{customer}-{n}",
    )
    document["data"] = {**document["data"], **data_overrides}  # type: ignore[dict-item]
    return document


def _binary_order(customer: str, n: int, **line_overrides: object) -> BadRecord:
    """An order as the official CloudEvents SDK sends it in binary mode, with a bad line."""
    line = {"product_id": "P1", "quantity": 1, "unit_price": "10", **line_overrides}
    event = SdkEvent(
        {
            "id": f"{customer}-{n}",
            "source": "test-bad-input",
            "type": "crm.order.placed.v1",
            "subject": customer,
            "time": T0,
            "datacontenttype": "application/json",
        },
        {"order_id": f"{customer}-O{n}", "lines": [line]},
    )
    message = ce_kafka.to_binary_event(event, key_mapper=lambda e: e.get_subject())
    return BadRecord(
        message.value,
        "invalid data of crm.order.placed.v1: lines.0.quantity",
        customer.encode(),
        list(message.headers.items()),
    )


async def test_each_kind_of_bad_record_is_dead_lettered_and_the_rest_applied(
    platform: dict[str, str],
) -> None:
    customer = unique("bad")
    key = customer.encode()
    without_subject = _order(customer, 91)
    del without_subject["subject"]
    bad_records: dict[str, BadRecord] = {
        "malformed json": BadRecord(_raw(_order(customer, 90))[:-7], "invalid envelope", key),
        "missing subject": BadRecord(json.dumps(without_subject).encode(), "subject", key),
        "wrong schema": BadRecord(
            _raw(_order(customer, 92, lines=[{"product_id": "P1", "quantity": "many"}])),
            "invalid data of crm.order.placed.v1",
            key,
        ),
        "unknown type": BadRecord(
            _raw({**_order(customer, 93), "type": "crm.order.teleported.v1"}),
            "unknown event type 'crm.order.teleported.v1'",
            key,
        ),
        "2 MB payload": BadRecord(
            _raw(_order(customer, 94, note="x" * (2 * 1024 * 1024))), "event too large", key
        ),
        "no key": BadRecord(
            _raw(_order(customer, 95)),
            f"message has no key: the key must be the subject '{customer}'",
            None,
        ),
        "key of another customer": BadRecord(
            _raw(_order(customer, 96)),
            f"message key b'someone-else' is not the subject '{customer}'",
            b"someone-else",
        ),
        "dated 2099": BadRecord(
            _raw(_order(customer, 97, time=datetime(2099, 1, 1, tzinfo=UTC))),
            "time 2099-01-01T00:00:00+00:00 is in the future",
            key,
        ),
        "binary mode, wrong schema": _binary_order(customer, 98, quantity="many"),
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
        for bad in bad_records.values():
            producer.send("crm.orders", key=key, value=_raw(_order(customer, good)))
            producer.send("crm.orders", key=bad.key, value=bad.value, headers=bad.headers)
            good += 1
        producer.send("crm.orders", key=key, value=_raw(_order(customer, good)))
        good += 1
        producer.flush()
    finally:
        producer.close()

    profile = f"http://127.0.0.1:{platform['CRM_PROFILE_API_PORT']}/customers/{customer}"
    await eventually(
        lambda: get_json(profile, headers=service_auth(platform)),
        lambda r: r[0] == 200 and r[1]["purchases"]["orders"] == good,
        what=f"all {good} valid orders around the bad records to be applied",
    )

    bad_values = {bad.value for bad in bad_records.values()}

    def letters_for_customer() -> list[dict[str, str]]:
        found = []
        for record in read_topic(platform["CRM_KAFKA_BOOTSTRAP"], "crm.deadletter"):
            if record.value in bad_values:
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
        for kind, bad in bad_records.items():
            assert bad.value in originals, (
                f"{consumer}: the {kind} record is not in the dead-letter topic"
            )
            letter = originals[bad.value]
            assert bad.reason in letter[deadletter.REASON], f"{kind}: {letter[deadletter.REASON]}"
            assert letter[deadletter.ORIGIN_TOPIC] == "crm.orders"
            assert int(letter[deadletter.ORIGIN_OFFSET]) >= 0
            for name, value in bad.headers or []:
                assert letter[name] == value.decode(), f"{kind}: header {name} not kept"

    for worker, pid in pids.items():
        assert pid is not None, f"{worker.name} was not running"
        assert launcher.running_pid(worker, platform) == pid, f"{worker.name} died (restarted)"
