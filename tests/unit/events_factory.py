"""Small builders of valid events for unit tests of the pure projections."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_shared.contracts.events import Event, build_event, validate_event

_ids = itertools.count(1)
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def event(
    event_type: str,
    customer_id: str,
    data: dict[str, Any],
    *,
    minutes: float = 0,
    event_id: str | None = None,
    source: str = "test",
) -> Event:
    document = build_event(
        event_type,
        customer_id,
        data,
        source=source,
        time=at(minutes),
        event_id=event_id or f"e{next(_ids)}",
    )
    return validate_event(document)


def order(
    customer_id: str, order_id: str, *lines: tuple[str, int, str], minutes: float = 0
) -> Event:
    return event(
        "crm.order.placed.v1",
        customer_id,
        {
            "order_id": order_id,
            "lines": [
                {"product_id": p, "quantity": q, "unit_price": price} for p, q, price in lines
            ],
        },
        minutes=minutes,
    )


def refund(
    customer_id: str, refund_id: str, *lines: tuple[str, int, str], minutes: float = 0
) -> Event:
    return event(
        "crm.order.refunded.v1",
        customer_id,
        {
            "refund_id": refund_id,
            "lines": [
                {"product_id": p, "quantity": q, "unit_price": price} for p, q, price in lines
            ],
        },
        minutes=minutes,
    )
