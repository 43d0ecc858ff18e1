"""Kafka records in either CloudEvents content mode decode to the same validated event."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent as SdkEvent

from crm_shared.contracts.events import (
    InvalidEvent,
    OrderPlaced,
    build_event,
    decode_record,
    encode_event,
)

TIME = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
DATA = {
    "order_id": "O-1",
    "lines": [{"product_id": "P1", "quantity": 2, "unit_price": "1.50"}],
}


def _sdk_event(**attributes: object) -> SdkEvent:
    """An order as another system builds it with the official CloudEvents SDK."""
    return SdkEvent(
        {
            "id": "pos-1",
            "source": "pos",
            "type": "crm.order.placed.v1",
            "subject": "C-1",
            "time": TIME,
            "datacontenttype": "application/json",
            **attributes,
        },
        DATA,
    )


def _binary(event: SdkEvent) -> tuple[bytes, list[tuple[str, bytes]]]:
    message = ce_kafka.to_binary_event(event, key_mapper=lambda e: e.get_subject())
    return message.value, list(message.headers.items())


def test_the_sdk_binary_mode_decodes_to_the_same_event_as_the_structured_mode() -> None:
    value, headers = _binary(_sdk_event())
    binary = decode_record(value, headers)
    structured = decode_record(
        encode_event(
            build_event(
                "crm.order.placed.v1", "C-1", DATA, source="pos", time=TIME, event_id="pos-1"
            )
        )
    )
    assert binary == structured
    assert isinstance(binary.data, OrderPlaced)
    assert binary.data.total == Decimal("3.00")
    assert (binary.customer_id, binary.time) == ("C-1", TIME)


def test_the_sdk_structured_mode_with_its_content_type_header_is_read_as_structured() -> None:
    message = ce_kafka.to_structured_event(_sdk_event())
    assert message.headers == {"content-type": b"application/cloudevents+json"}
    event = decode_record(message.value, list(message.headers.items()))
    assert (event.id, event.type, event.time) == ("pos-1", "crm.order.placed.v1", TIME)


def test_ce_headers_beside_the_structured_content_type_are_not_read() -> None:
    document = build_event("crm.order.placed.v1", "C-1", DATA, source="shop", event_id="s-1")
    headers = [("content-type", b"application/cloudevents+json"), ("ce_id", b"other")]
    assert decode_record(encode_event(document), headers).id == "s-1"


def test_a_record_with_unrelated_headers_only_is_structured() -> None:
    document = build_event("crm.order.placed.v1", "C-1", DATA, source="shop", event_id="s-2")
    headers = [("traceparent", b"00-abc-def-01"), ("content-type", b"application/json")]
    assert decode_record(encode_event(document), headers).id == "s-2"


def test_binary_mode_tolerates_media_type_parameters_extensions_and_header_case() -> None:
    value, headers = _binary(_sdk_event(partitionkey="C-1"))
    headers = [
        ("Content-Type" if name == "content-type" else name.upper(), raw)
        for name, raw in headers
        if name != "content-type"
    ] + [("Content-Type", b"application/json; charset=utf-8"), ("ce_unused", None)]
    assert decode_record(value, headers).id == "pos-1"


def test_binary_mode_without_content_type_reads_the_data_as_json() -> None:
    assert decode_record(VALUE, _without("content-type")).id == "pos-1"


VALUE, HEADERS = _binary(_sdk_event())


def _without(name: str) -> list[tuple[str, bytes]]:
    return [(n, raw) for n, raw in HEADERS if n != name]


def _with(name: str, raw: bytes) -> list[tuple[str, bytes]]:
    return [*_without(name), (name, raw)]


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (VALUE, _without("ce_specversion"), r"specversion: Field required \(binary mode\)"),
        (VALUE, _without("ce_subject"), r"subject: Field required \(binary mode\)"),
        (b'{"order_id": ', HEADERS, "invalid data: the record value is not JSON"),
        (b"[1, 2]", HEADERS, "data: Input should be a valid dictionary"),
        (VALUE, _with("ce_id", b"\xff"), "header ce_id is not UTF-8 text"),
        (VALUE, _with("ce_time", b"yesterday"), "time: "),
        (VALUE, _with("ce_time", b"2024-05-01T10:00:00"), "UTC offset"),
        (VALUE, _with("content-type", b"text/xml"), "datacontenttype"),
        (
            json.dumps({"order_id": "O"}).encode(),
            HEADERS,
            r"invalid data of crm.order.placed.v1: lines: Field required \(binary mode\)",
        ),
        (b" " * (1024 * 1024) + VALUE, HEADERS, "event too large"),
    ],
)
def test_invalid_binary_mode_records_are_refused_with_a_reason(
    value: bytes, headers: list[tuple[str, bytes]], reason: str
) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        decode_record(value, headers)
