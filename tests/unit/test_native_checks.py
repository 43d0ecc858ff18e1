"""The hot path's validator uses its native checks, and they change no outcome.

`parse_event` validates with a copy of the typed envelopes whose Python validators (money's
number reading and digit checks, the time's offset) are native checks accepting a subset, with
the reference as the fallback. These tests fail if pydantic stops building that copy from the
schema given (then the hot path would silently be the reference again), or if the copy ever
reads a record differently from the reference.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from crm_shared.contracts.events import (
    _TYPED_ENVELOPES,
    _VALIDATE_TYPED_JSON,
    OrderPlaced,
    encode_event,
    parse_event,
    parse_event_in_two_steps,
)
from crm_shared.ops.demo.workload import Workload

_ORDER = (
    '{"specversion":"1.0","id":"e1","source":"shop","type":"crm.order.placed.v1",'
    '"subject":"C-1","time":"%s","data":{"order_id":"O","lines":'
    '[{"product_id":"P","quantity":1,"unit_price":%s}]}}'
)


@pytest.mark.parametrize(
    ("time", "price"),
    [
        ("2024-05-01T10:00:00Z", "3.0"),  # a JSON number: Python reads it as the reference does
        ("2024-05-01T10:00:00Z", '"1000000"'),  # at the bound: not of the native shape
        ("2024-05-01T10:00:00Z", '"2.50000"'),  # zeros beyond four decimals
        ("2024-05-01T10:00:00Z", '"-0"'),
    ],
)
def test_what_the_native_checks_leave_to_the_reference_is_still_accepted(
    time: str, price: str
) -> None:
    raw = (_ORDER % (time, price)).encode()
    with pytest.raises(ValidationError):
        _VALIDATE_TYPED_JSON(raw)
    event = parse_event(raw)
    assert isinstance(event.data, OrderPlaced)
    assert event == parse_event_in_two_steps(raw)


def test_a_naive_time_is_refused_by_the_native_check_with_the_reference_reason() -> None:
    raw = (_ORDER % ("2024-05-01T10:00:00", '"1"')).encode()
    with pytest.raises(ValidationError):
        _VALIDATE_TYPED_JSON(raw)
    with pytest.raises(ValueError, match="time must carry a UTC offset"):
        parse_event(raw)


def test_the_native_checks_read_the_workload_into_the_reference_values_and_classes() -> None:
    for document in Workload(seed=11, prefix="native").events(2000):
        raw = encode_event(document)
        native, reference = _VALIDATE_TYPED_JSON(raw), _TYPED_ENVELOPES.validate_json(raw)
        assert type(native.data) is type(reference.data)
        assert native == reference
