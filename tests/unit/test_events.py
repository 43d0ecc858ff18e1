"""The event contract: what is accepted, what is refused, and why."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from crm_shared.contracts.events import (
    MAX_EVENT_BYTES,
    InvalidEvent,
    OrderPlaced,
    build_event,
    encode_event,
    parse_event,
)
from crm_shared.contracts.topics import ALL_TOPICS, topic_for


def _order_document(**overrides: object) -> dict[str, object]:
    document = build_event(
        "crm.order.placed.v1",
        "C-1",
        {"order_id": "O-1", "lines": [{"product_id": "P1", "quantity": 2, "unit_price": "1.50"}]},
        source="shop",
        event_id="id-1",
    )
    document.update(overrides)
    return document


def test_valid_event_round_trips_through_the_wire_form() -> None:
    event = parse_event(json.dumps(_order_document()).encode())
    assert event.customer_id == "C-1"
    assert event.type == "crm.order.placed.v1"
    assert str(event.data.total) == "3.00"  # type: ignore[attr-defined]
    assert event.time.utcoffset() is not None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid envelope"),
        (json.dumps(_order_document(type="crm.nothing.v9")).encode(), "unknown event type"),
        (json.dumps(_order_document(subject="")).encode(), "subject"),
        (
            json.dumps({k: v for k, v in _order_document().items() if k != "subject"}).encode(),
            "subject",
        ),
        (
            json.dumps(_order_document(data={"order_id": "O"})).encode(),
            "data of crm.order.placed.v1",
        ),
        (json.dumps(_order_document(time="2024-05-01T10:00:00")).encode(), "UTC offset"),
        (json.dumps(_order_document(specversion="0.3")).encode(), "specversion"),
    ],
)
def test_invalid_records_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        parse_event(raw)


def test_oversized_record_is_refused_before_decoding() -> None:
    raw = b'{"pad": "' + b"x" * MAX_EVENT_BYTES + b'"}'
    with pytest.raises(InvalidEvent, match="too large"):
        parse_event(raw)


def test_negative_quantities_and_duplicate_channels_are_refused() -> None:
    with pytest.raises(InvalidEvent, match="quantity"):
        build_event(
            "crm.order.placed.v1",
            "C-1",
            {"order_id": "O", "lines": [{"product_id": "P", "quantity": -1, "unit_price": "1"}]},
            source="shop",
        )
    with pytest.raises(InvalidEvent, match="once"):
        build_event(
            "crm.channel_preference.set.v1", "C-1", {"channels": ["email", "email"]}, source="web"
        )


def test_every_event_type_has_exactly_one_topic() -> None:
    routed = [t for topic in ALL_TOPICS for t in topic.event_types]
    assert len(routed) == len(set(routed))
    assert topic_for("crm.consent.revoked.v1") == "crm.preferences"


def _order_with_lines(lines: list[dict[str, object]]) -> dict[str, object]:
    return build_event(
        "crm.order.placed.v1", "C-1", {"order_id": "O", "lines": lines}, source="shop"
    )


AT_THE_BOUNDS = {"product_id": "P", "quantity": 1_000_000, "unit_price": "1000000.0000"}


def test_an_order_exactly_at_the_bounds_is_accepted_and_sums_exactly() -> None:
    event = parse_event(encode_event(_order_with_lines([AT_THE_BOUNDS] * 2000)))
    assert isinstance(event.data, OrderPlaced)
    assert event.data.total == Decimal(2000) * 1_000_000 * 1_000_000


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (
            [{**AT_THE_BOUNDS, "quantity": 1_000_001}],
            "quantity: Input should be less than or equal to 1000000",
        ),
        (
            [{**AT_THE_BOUNDS, "unit_price": "1000000.0001"}],
            "unit_price: Input should be less than or equal to 1000000",
        ),
        (
            [{**AT_THE_BOUNDS, "unit_price": "0.00001"}],
            "unit_price: Decimal input should have no more than 4 decimal places",
        ),
        ([AT_THE_BOUNDS] * 2001, "lines: Tuple should have at most 2000 items"),
    ],
)
def test_an_order_beyond_the_bounds_is_refused_with_the_bound(
    lines: list[dict[str, object]], reason: str
) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        _order_with_lines(lines)
