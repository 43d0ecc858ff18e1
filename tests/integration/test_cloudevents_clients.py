"""Any CloudEvents client can publish: the official SDK in both Kafka content modes, and kcat
with ce_ headers (binary mode), reach the projections like our own SDK's events."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent as SdkEvent
from kafka import KafkaProducer

from tests.integration.helpers import eventually, get_json, service_auth, unique

pytestmark = pytest.mark.integration

T0 = datetime(2024, 7, 1, 9, 0, tzinfo=UTC)


def _sdk_order(customer: str, n: int) -> SdkEvent:
    return SdkEvent(
        {
            "id": f"{customer}-{n}",
            "source": "cloudevents-sdk",
            "type": "crm.order.placed.v1",
            "subject": customer,
            "time": T0 + timedelta(days=n),
            "datacontenttype": "application/json",
        },
        {
            "order_id": f"{customer}-O{n}",
            "lines": [{"product_id": "P-SDK", "quantity": 3, "unit_price": "2.50"}],
        },
    )


async def test_orders_from_the_official_cloudevents_sdk_are_folded_in_both_content_modes(
    platform: dict[str, str],
) -> None:
    customer = unique("sdk")
    producer = KafkaProducer(bootstrap_servers=platform["CRM_KAFKA_BOOTSTRAP"], acks="all")
    try:
        for n, to_message in enumerate(
            (ce_kafka.to_binary_event, ce_kafka.to_structured_event, ce_kafka.to_binary_event)
        ):
            message = to_message(_sdk_order(customer, n), key_mapper=lambda e: e.get_subject())
            assert ("ce_id" in message.headers) == (to_message is ce_kafka.to_binary_event)
            producer.send(
                "crm.orders",
                key=message.key.encode(),
                value=message.value,
                headers=list(message.headers.items()),
            )
        producer.flush()
    finally:
        producer.close()

    url = f"http://127.0.0.1:{platform['CRM_PROFILE_API_PORT']}/customers/{customer}"
    _, body = await eventually(
        lambda: get_json(url, headers=service_auth(platform)),
        lambda r: r[0] == 200 and r[1]["purchases"]["orders"] == 3,
        what="the profile to fold the three orders the CloudEvents SDK sent",
    )
    purchases = body["purchases"]
    (gbp,) = purchases["by_currency"]
    assert Decimal(gbp["gross_revenue"]) == Decimal("22.50")
    assert purchases["items"] == 9
    assert datetime.fromisoformat(purchases["first_purchase_at"]) == T0
    assert datetime.fromisoformat(purchases["last_purchase_at"]) == T0 + timedelta(days=2)


def _kcat_binary(
    bootstrap: str, topic: str, key: str, headers: dict[str, str], data: dict[str, object]
) -> None:
    """Publish like the README's kcat example: attributes as -H headers, the data as the value."""
    header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}={value}")]
    subprocess.run(
        ["kcat", "-P", "-b", bootstrap, "-t", topic, "-k", key, *header_args],
        input=json.dumps(data).encode(),
        check=True,
        timeout=30,
    )


async def test_a_contact_sent_by_kcat_in_binary_mode_reaches_the_timeline(
    platform: dict[str, str],
) -> None:
    customer = unique("kcat-bin")
    attributes = {
        "ce_specversion": "1.0",
        "ce_id": f"{customer}-call",
        "ce_source": "pos",
        "ce_type": "crm.contact.logged.v1",
        "ce_subject": customer,
        "ce_time": "2024-05-01T10:00:00Z",
        "content-type": "application/json",
    }
    data = {
        "channel": "phone",
        "direction": "inbound",
        "department": "support",
        "topic": "delivery delay",
        "outcome": "resolved",
    }
    _kcat_binary(platform["CRM_KAFKA_BOOTSTRAP"], "crm.contacts", customer, attributes, data)
    url = f"http://127.0.0.1:{platform['CRM_INTERACTION_API_PORT']}/customers/{customer}/timeline"
    _, page = await eventually(
        lambda: get_json(url, headers=service_auth(platform)),
        lambda r: r[0] == 200 and len(r[1]["items"]) == 1,
        what="the binary-mode contact in the timeline",
    )
    [item] = page["items"]
    assert (item["source"], item["event_id"]) == ("pos", f"{customer}-call")
    assert item["summary"] == "inbound phone call to support: delivery delay -> resolved"
    assert datetime.fromisoformat(item["occurred_at"]) == datetime(2024, 5, 1, 10, tzinfo=UTC)
