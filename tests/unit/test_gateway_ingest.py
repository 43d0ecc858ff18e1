"""Gateway ingestion: per-event validation, topics and keys, and what the client is told."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_shared.contracts.events import MAX_EVENT_BYTES, build_event, encode_event
from gateway_service.ingest import (
    MAX_BATCH,
    Accepted,
    BatchSizeError,
    Plan,
    Rejected,
    check_batch_size,
    plan_batch,
    settle,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)
SOURCES = frozenset({"shop", "web"})


def _plan(
    documents: Sequence[Any], sources: Collection[str] = SOURCES, now: datetime = NOW
) -> Plan:
    return plan_batch(documents, sources=sources, now=now, max_skew=SKEW)


def _order(customer: str = "C1", event_id: str = "o1", **overrides: Any) -> dict[str, Any]:
    document = build_event(
        "crm.order.placed.v1",
        customer,
        {"order_id": "O1", "lines": [{"product_id": "P1", "quantity": 1, "unit_price": "2.00"}]},
        source="shop",
        time=NOW - timedelta(hours=1),
        event_id=event_id,
    )
    document.update(overrides)
    return document


def _consent(customer: str = "C1", event_id: str = "c1") -> dict[str, Any]:
    return build_event(
        "crm.consent.granted.v1",
        customer,
        {"purpose": "marketing"},
        source="web",
        time=NOW - timedelta(hours=1),
        event_id=event_id,
    )


def test_valid_events_go_to_their_topic_keyed_by_customer_as_sent() -> None:
    order, consent = _order("C1"), _consent("C2")
    plan = _plan([order, consent])
    assert plan.rejected == ()
    assert [(p.index, p.id, p.topic, p.key) for p in plan.publish] == [
        (0, "o1", "crm.orders", b"C1"),
        (1, "c1", "crm.preferences", b"C2"),
    ]
    assert plan.publish[0].value == encode_event(order)


def test_extension_attributes_are_kept_on_the_wire() -> None:
    plan = _plan([_order(traceparent="00-abc-def-01")])
    assert json.loads(plan.publish[0].value)["traceparent"] == "00-abc-def-01"


def test_each_invalid_event_is_rejected_with_the_contract_reason_and_the_rest_go() -> None:
    plan = _plan(
        [
            _order(type="crm.nothing.v9", id="x1"),
            "not an object",
            _order(event_id="ok"),
            _order(data={"order_id": "O"}, id="x2"),
            _order(time="2024-05-01T10:00:00", id="x3"),
            {"id": 7},
        ]
    )
    assert [p.index for p in plan.publish] == [2]
    reasons = {r.index: (r.id, r.reason) for r in plan.rejected}
    assert reasons[0] == ("x1", "unknown event type 'crm.nothing.v9'")
    assert reasons[1] == (None, "an event must be a JSON object")
    assert reasons[3][0] == "x2" and reasons[3][1].startswith("invalid data of crm.order.placed.v1")
    assert reasons[4][0] == "x3" and "time must carry a UTC offset" in reasons[4][1]
    assert reasons[5][0] is None and reasons[5][1].startswith("invalid envelope")


def test_an_event_over_the_size_limit_is_rejected_as_too_large() -> None:
    big = build_event(
        "crm.customer.updated.v1",
        "C1",
        {"attributes": {"blob": "x" * MAX_EVENT_BYTES}},
        source="shop",
        time=NOW,
        event_id="big",
    )
    plan = _plan([big, _order()])
    assert [p.id for p in plan.publish] == ["o1"]
    (rejected,) = plan.rejected
    assert (rejected.index, rejected.id) == (0, "big")
    assert rejected.reason.startswith("event too large: ")
    assert f"limit {MAX_EVENT_BYTES}" in rejected.reason


def test_duplicates_within_a_batch_are_both_published_for_the_projections_to_deduplicate() -> None:
    plan = _plan([_order(event_id="same"), _order(event_id="same")])
    assert [(p.index, p.id) for p in plan.publish] == [(0, "same"), (1, "same")]


def test_an_event_from_a_source_not_granted_to_the_key_is_rejected_naming_those_granted() -> None:
    plan = _plan(
        [_order(event_id="mine"), _order(event_id="theirs", source="pos"), _consent()],
    )
    assert [p.id for p in plan.publish] == ["mine", "c1"]
    (refused,) = plan.rejected
    assert (refused.index, refused.id) == (1, "theirs")
    assert refused.reason == "source 'pos' refused: this API key may publish only as 'shop', 'web'"


def test_a_key_issued_for_no_source_publishes_nothing_and_says_why() -> None:
    plan = _plan([_order(), _consent()], sources=())
    assert plan.publish == ()
    assert [r.index for r in plan.rejected] == [0, 1]
    assert all("issued for no source" in r.reason for r in plan.rejected)


def test_an_event_dated_beyond_the_allowed_skew_is_rejected_and_the_rest_go() -> None:
    plan = _plan(
        [
            _order(event_id="late-clock", time=(NOW + SKEW).isoformat()),
            _order(event_id="2099", time="2099-01-01T00:00:00Z"),
            _order(event_id="past"),
        ]
    )
    assert [p.id for p in plan.publish] == ["late-clock", "past"], "up to now + skew is fine"
    (refused,) = plan.rejected
    assert (refused.index, refused.id) == (1, "2099")
    assert refused.reason.startswith("time 2099-01-01T00:00:00+00:00 is in the future")
    assert "300 s after 2024-06-01T12:00:00+00:00" in refused.reason


def test_the_future_is_judged_by_the_clock_passed_in() -> None:
    tomorrow = _order(event_id="t", time=(NOW + timedelta(days=1)).isoformat())
    assert [r.id for r in _plan([tomorrow]).rejected] == ["t"]
    assert [p.id for p in _plan([tomorrow], now=NOW + timedelta(days=1)).publish] == ["t"]


@pytest.mark.parametrize(("count", "problem"), [(0, "empty"), (MAX_BATCH + 1, "holds 1001 events")])
def test_an_empty_or_too_long_batch_is_refused_as_a_whole(count: int, problem: str) -> None:
    with pytest.raises(BatchSizeError, match=problem):
        check_batch_size(count)
    with pytest.raises(BatchSizeError, match=problem):
        _plan([_order(event_id=f"e{i}") for i in range(count)])


def test_a_batch_of_exactly_the_limit_is_planned() -> None:
    plan = _plan([_order(event_id=f"e{i}") for i in range(MAX_BATCH)])
    assert len(plan.publish) == MAX_BATCH


def test_acknowledged_events_are_accepted_and_results_keep_the_batch_order() -> None:
    plan = _plan([_order(event_id="a"), "junk", _consent(event_id="b")])
    result = settle(plan, {})
    assert (result.accepted, result.rejected) == (2, 1)
    assert result.results == (
        Accepted(0, "a", "crm.orders"),
        Rejected(1, None, "an event must be a JSON object"),
        Accepted(2, "b", "crm.preferences"),
    )


def test_an_event_kafka_did_not_acknowledge_is_rejected_never_accepted() -> None:
    plan = _plan([_order(event_id="a"), _consent(event_id="b")])
    result = settle(plan, {1: "no acknowledgement within 10 s"})
    assert (result.accepted, result.rejected) == (1, 1)
    assert result.results[1] == Rejected(
        1, "b", "broker unavailable: no acknowledgement within 10 s"
    )


def test_everything_rejected_when_the_broker_is_away() -> None:
    plan = _plan([_order(event_id="a"), _consent(event_id="b")])
    result = settle(plan, {0: "cannot reach Kafka", 1: "cannot reach Kafka"})
    assert (result.accepted, result.rejected) == (0, 2)
    assert all(isinstance(r, Rejected) for r in result.results)


def test_derived_events_and_clock_ticks_cannot_be_forged_through_the_gateway() -> None:
    segment = build_event(
        "crm.segment.entered.v1",
        "C1",
        {"segment": "lapsed", "version": 1, "reason": "forged"},
        source="shop",
        time=NOW,
        event_id="forged-segment",
    )
    tick = build_event(
        "crm.clock.ticked.v1",
        "clock",
        {"topic": "crm.orders", "partition": 0},
        source="shop",
        time=NOW,
        event_id="forged-tick",
    )
    plan = _plan([segment, tick, _order(event_id="real")])
    assert [p.id for p in plan.publish] == ["real"]
    assert [(r.id, r.reason) for r in plan.rejected] == [
        (
            "forged-segment",
            "crm.segment.entered.v1 is published by the platform itself, not through the gateway",
        ),
        (
            "forged-tick",
            "crm.clock.ticked.v1 is published by the platform itself, not through the gateway",
        ),
    ]
