"""The event contract: what is accepted, what is refused, and why."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from crm_shared.contracts.events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    RECOMMENDATIONS_REFRESHED,
    Event,
    InvalidEvent,
    OrderPlaced,
    RecommendationsRefreshed,
    RecommendedProduct,
    build_event,
    encode_event,
    encode_new_event,
    parse_event,
    parse_event_in_two_steps,
)
from crm_shared.contracts.topics import ALL_TOPICS, topic_for
from crm_shared.ops.demo.synthetic import generate
from crm_shared.ops.demo.workload import Workload


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


# ----------------------------------------------------------------------------- one-pass parsing

_ENVELOPE = (
    '{"specversion":"1.0","id":"e1","source":"shop","type":"%s","subject":"C-1",'
    '"time":"2024-05-01T10:00:00Z","data":%s}'
)


def _order_with(price: str = '"1"', quantity: str = "1") -> str:
    line = f'{{"product_id":"P","quantity":{quantity},"unit_price":{price}}}'
    return _ENVELOPE % ("crm.order.placed.v1", f'{{"order_id":"O","lines":[{line}]}}')


_VIEWED = _ENVELOPE % ("crm.product.viewed.v1", '{"product_id":"P"}')
_NEAR_MISSES = [
    *(
        _order_with(price=price)
        for price in ("3.0", "1e2", "2.55", "1.00000000000000001", "-0.0", "1000000.0", "7")
    ),
    *(_order_with(price=price) for price in ('"3.0"', "0.00005", "1000000.01", "NaN", "true")),
    *(_order_with(quantity=q) for q in ("2.0", "1e2", '"3"', "2.5", "true", "1000001")),
    _VIEWED.replace('"type"', '"type":"crm.order.placed.v1","type"'),
    _VIEWED.replace('"data"', '"type":"crm.order.placed.v1","data"'),
    _VIEWED.replace('"data"', '"data":{"product_id":"Z"},"data"'),
    _VIEWED.replace('{"product_id":"P"}', '{"product_id":"P","product_id":"Q"}'),
    _VIEWED.replace('{"product_id":"P"}', "[1]"),
    _VIEWED.replace("2024-05-01T10:00:00Z", "1714557600"),
    _VIEWED.replace("2024-05-01T10:00:00Z", "2024-05-01T12:00:00+02:00"),
    _VIEWED.replace("2024-05-01T10:00:00Z", "2024-05-01T10:00:00"),
    _VIEWED[:-1] + ',"datacontenttype":"text/plain"}',
    _ENVELOPE % ("crm.feedback.given.v1", '{"score":5.0,"kind":"praise","channel":"email"}'),
    _ENVELOPE % ("crm.feedback.given.v1", '{"score":true}'),
    _ENVELOPE % ("crm.customer.registered.v1", '{"attributes":{"a":"1","a":2}}'),
    _ENVELOPE % ("crm.channel_preference.set.v1", '{"channels":["email","email"]}'),
    _ENVELOPE
    % (
        "crm.channel_preference.set.v1",
        '{"channels":["sms"],"quiet_hours":{"start":"22:00","end":"07:00","timezone":"Mars/Base"}}',
    ),
    _ENVELOPE % ("crm.segment.entered.v1", '{"segment":"lapsed","version":1.0,"reason":"r"}'),
    _ENVELOPE % ("crm.nothing.v9", "{}"),
]


def _outcome(parse: Callable[[bytes], Event], raw: bytes) -> tuple[str, object, str]:
    try:
        event = parse(raw)
    except InvalidEvent as problem:
        return ("refused", None, str(problem))
    return ("accepted", event, event.data.model_dump_json())


@pytest.mark.parametrize("record", _NEAR_MISSES)
def test_one_pass_parsing_accepts_reads_and_refuses_exactly_as_the_two_steps(record: str) -> None:
    raw = record.encode()
    assert _outcome(parse_event, raw) == _outcome(parse_event_in_two_steps, raw)


def test_one_pass_parsing_reads_the_workload_exactly_as_the_two_steps() -> None:
    for document in Workload(seed=5, prefix="parse").events(3000):
        raw = encode_event(document)
        assert _outcome(parse_event, raw) == _outcome(parse_event_in_two_steps, raw)


def test_a_json_number_price_keeps_its_python_reading() -> None:
    event = parse_event(_order_with(price="3.0").encode())
    assert isinstance(event.data, OrderPlaced)
    assert str(event.data.lines[0].unit_price) == "3.0"


def test_an_events_model_builds_what_its_data_as_a_mapping_builds_after_full_validation() -> None:
    """build_event trusts its type's model (validated when built) and checks only the envelope:
    the full validation of the same data must accept it, with the same bytes, and so must the
    one-step encoding of the model that the derived events take (the workload's orders, refunds,
    views, contacts and feedback; the demo's preferences, consents, cases and journeys)."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    customers = [(f"C-{n}", start, start + timedelta(days=400)) for n in range(40)]
    documents = [*Workload(seed=7, prefix="model").events(500), *generate(customers, ["P1", "P2"])]
    assert len({document["type"] for document in documents}) >= 12
    for document in documents:
        event = parse_event(encode_event(document))
        mapping = event.data.model_dump(mode="json")
        built = [
            build_event(
                event.type,
                event.customer_id,
                data,
                source=event.source,
                time=event.time,
                event_id=event.id,
            )
            for data in (event.data, mapping)
        ]
        assert encode_event(built[0]) == encode_event(built[1])
        given = {"source": event.source, "time": event.time, "event_id": event.id}
        in_one_step = encode_new_event(event.type, event.customer_id, event.data, **given)
        assert in_one_step == encode_event(built[1])


def test_a_float_in_an_event_encoded_in_one_step_reads_as_the_same_number() -> None:
    picks = tuple(
        RecommendedProduct(product_id=f"P{n}", score=score, reason="bought together")
        for n, score in enumerate((0.1, 1e-05, 1e16, 1 / 3, 0.0))
    )
    data = RecommendationsRefreshed(picks=picks, personalised=True, version=1)
    given = {"source": "recommendation-service", "time": datetime(2024, 5, 1, tzinfo=UTC)}
    one_step = encode_new_event(RECOMMENDATIONS_REFRESHED, "C-1", data, event_id="e-1", **given)
    document = build_event(RECOMMENDATIONS_REFRESHED, "C-1", data, event_id="e-1", **given)
    assert json.loads(one_step) == json.loads(encode_event(document))


def _float_fields(annotation: Any, where: str, seen: set[type]) -> list[str]:
    if annotation is float:
        return [where]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return []
        seen.add(annotation)
        return [
            found
            for name, field in annotation.model_fields.items()
            for found in _float_fields(field.annotation, f"{annotation.__name__}.{name}", seen)
        ]
    return [
        found for argument in get_args(annotation) for found in _float_fields(argument, where, seen)
    ]


def test_no_float_in_an_event_takes_nan_or_infinity() -> None:
    """pydantic writes NaN as null where the json module refuses it: encode_new_event relies on
    the models refusing it. A new float field must be added here, refusing it too."""
    seen: set[type] = set()
    floats = {found for model in EVENT_TYPES.values() for found in _float_fields(model, "", seen)}
    assert floats == {"RecommendedProduct.score"}
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValidationError):
            RecommendedProduct(product_id="P1", score=bad, reason="bought together")
