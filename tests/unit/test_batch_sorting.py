"""The shared batch mechanism's pure part: what is folded, dead-lettered, ignored or skipped."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from broadcast_service.worker import PROJECTION as BROADCAST
from crm_shared.contracts import deadletter
from crm_shared.contracts.events import CLOCK_SUBJECT, CLOCK_TICKED, MAX_EVENT_BYTES, build_event
from crm_shared.runtime.projector import RawRecord, sort_batch
from interaction_service.worker import PROJECTION as INTERACTION

FOLDS = frozenset({"crm.order.placed.v1"})
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _raw(
    offset: int, document: object, *, key: bytes | None = b"C1", partition: int = 0
) -> RawRecord:
    value = document if isinstance(document, bytes) else json.dumps(document).encode()
    return RawRecord("crm.orders", partition, offset, key, value)


def _order(event_id: str, time: datetime = NOW) -> dict[str, object]:
    return build_event(
        "crm.order.placed.v1",
        "C1",
        {"order_id": "O", "lines": [{"product_id": "P", "quantity": 1, "unit_price": "1"}]},
        source="shop",
        event_id=event_id,
        time=time,
    )


def _refund(**data_overrides: object) -> dict[str, object]:
    document = build_event(
        "crm.order.refunded.v1",
        "C1",
        {"refund_id": "R", "lines": [{"product_id": "P", "quantity": 1, "unit_price": "1"}]},
        source="shop",
        time=NOW,
    )
    document["data"] = {**document["data"], **data_overrides}  # type: ignore[dict-item]
    return document


def test_valid_events_are_kept_in_order_and_positions_advance_past_every_record() -> None:
    batch = sort_batch(
        [_raw(5, _order("a")), _raw(6, b"garbage"), _raw(7, _order("b"))],
        {},
        FOLDS,
        "profile",
        now=NOW,
    )
    assert [e.id for e in batch.events] == ["a", "b"]
    assert batch.next_offsets == {("crm.orders", 0): 8}
    [letter] = batch.dead_letters
    assert (letter.offset, letter.value, letter.consumer) == (6, b"garbage", "profile")
    assert "invalid envelope" in letter.reason


def test_records_below_the_stored_position_are_skipped_as_already_applied() -> None:
    batch = sort_batch(
        [_raw(3, _order("old")), _raw(4, _order("new"))],
        {("crm.orders", 0): 4},
        FOLDS,
        "p",
        now=NOW,
    )
    assert [e.id for e in batch.events] == ["new"]
    assert batch.already_consumed == 1


def test_types_the_projection_does_not_fold_are_ignored_not_dead_lettered() -> None:
    batch = sort_batch([_raw(0, _refund())], {}, FOLDS, "p", now=NOW)
    assert batch.events == [] and batch.dead_letters == []
    assert batch.ignored_types == ["crm.order.refunded.v1"]


def test_a_key_that_is_not_the_subject_is_dead_lettered() -> None:
    batch = sort_batch([_raw(0, _order("a"), key=b"someone-else")], {}, FOLDS, "p", now=NOW)
    assert "not the subject" in batch.dead_letters[0].reason


def test_a_record_without_value_is_dead_lettered() -> None:
    batch = sort_batch([RawRecord("crm.orders", 1, 9, b"C1", None)], {}, FOLDS, "p", now=NOW)
    assert batch.dead_letters[0].reason == "empty record (no value)"
    assert batch.next_offsets == {("crm.orders", 1): 10}


def test_a_record_without_key_is_dead_lettered_because_its_order_is_not_guaranteed() -> None:
    batch = sort_batch([_raw(0, _order("a"), key=None)], {}, FOLDS, "p", now=NOW)
    assert batch.events == []
    [letter] = batch.dead_letters
    assert letter.reason == "message has no key: the key must be the subject 'C1'"
    assert letter.key is None


def test_an_event_dated_after_now_plus_the_skew_is_dead_lettered_and_its_neighbours_kept() -> None:
    records = [
        _raw(0, _order("a", NOW - timedelta(days=400))),
        _raw(1, _order("future", datetime(2099, 1, 1, tzinfo=UTC))),
        _raw(2, _order("b", NOW + timedelta(minutes=4))),
    ]
    batch = sort_batch(records, {}, FOLDS, "p", now=NOW, max_future_skew=timedelta(minutes=5))
    assert [e.id for e in batch.events] == ["a", "b"]
    [letter] = batch.dead_letters
    assert letter.offset == 1
    assert "time 2099-01-01T00:00:00+00:00 is in the future" in letter.reason
    assert batch.next_offsets == {("crm.orders", 0): 3}


def test_the_future_is_measured_from_the_now_passed_in_with_the_skew_passed_in() -> None:
    soon = [_raw(0, _order("soon", NOW + timedelta(seconds=90)))]
    assert sort_batch(soon, {}, FOLDS, "p", now=NOW, max_future_skew=timedelta(minutes=2)).events
    refused = sort_batch(soon, {}, FOLDS, "p", now=NOW, max_future_skew=timedelta(minutes=1))
    assert "more than 60 s after 2026-05-01T12:00:00+00:00" in refused.dead_letters[0].reason
    later = sort_batch(
        soon, {}, FOLDS, "p", now=NOW + timedelta(minutes=1), max_future_skew=timedelta(minutes=1)
    )
    assert [e.id for e in later.events] == ["soon"]


def _binary(offset: int, document: dict[str, object], **header_overrides: bytes) -> RawRecord:
    """A binary-mode record: attributes in ce_ headers, the data as the value."""
    headers = {
        **{f"ce_{name}": str(value).encode() for name, value in document.items() if name != "data"},
        "content-type": b"application/json",
        **header_overrides,
    }
    headers.pop("ce_datacontenttype")
    value = json.dumps(document["data"]).encode()
    return RawRecord("crm.orders", 0, offset, b"C1", value, list(headers.items()))


def test_binary_mode_records_are_folded_beside_structured_ones() -> None:
    batch = sort_batch(
        [_binary(0, _order("bin")), _raw(1, _order("struct"))], {}, FOLDS, "p", now=NOW
    )
    assert [e.id for e in batch.events] == ["bin", "struct"]
    assert batch.dead_letters == []


def test_a_refused_binary_mode_record_keeps_its_ce_headers_beside_the_reason() -> None:
    record = _binary(0, _order("bad"), ce_time=b"2099-01-01T00:00:00Z")
    [letter] = sort_batch([record], {}, FOLDS, "p", now=NOW).dead_letters
    headers = deadletter.read_headers(letter.headers())
    assert headers["ce_id"] == "bad"
    assert headers["ce_type"] == "crm.order.placed.v1"
    assert headers["ce_time"] == "2099-01-01T00:00:00Z"
    assert headers["content-type"] == "application/json"
    assert "in the future" in headers[deadletter.REASON]
    assert headers[deadletter.ORIGIN_TOPIC] == "crm.orders"
    assert letter.value == record.value


SKIMMED = frozenset({"crm.orders"})


def test_on_a_skimmed_topic_a_type_not_folded_is_ignored_from_its_type_alone() -> None:
    """Its data and key are not checked: not folded here, it is the folding workers' to judge."""
    records = [
        _raw(0, _refund(lines="none")),
        _raw(1, _refund(), key=b"someone-else"),
        _binary(2, _refund(lines="none")),
        _raw(3, _order("a")),
    ]
    batch = sort_batch(records, {}, FOLDS, "p", now=NOW, skimmed_topics=SKIMMED)
    assert batch.dead_letters == []
    assert batch.ignored_types == ["crm.order.refunded.v1"] * 3
    assert [e.id for e in batch.events] == ["a"]
    assert batch.next_offsets == {("crm.orders", 0): 4}
    unskimmed = sort_batch(records, {}, FOLDS, "p", now=NOW)
    assert [letter.offset for letter in unskimmed.dead_letters] == [0, 1, 2]


def test_on_a_skimmed_topic_what_names_no_known_type_is_decoded_and_dead_lettered() -> None:
    unknown = {**_order("u"), "type": "crm.order.teleported.v1"}
    untyped = {name: value for name, value in _order("t").items() if name != "type"}
    records = [
        _raw(0, b'{"type": "crm.order.refunded.v1", '),  # not JSON: the decode says so
        _raw(1, unknown),
        _raw(2, untyped),
        _raw(3, _order("bad", NOW + timedelta(days=1))),  # folded: checked whole
        RawRecord("crm.orders", 0, 4, b"C1", None),
    ]
    batch = sort_batch(records, {}, FOLDS, "p", now=NOW, skimmed_topics=SKIMMED)
    reasons = [letter.reason for letter in batch.dead_letters]
    assert len(reasons) == 5 and batch.ignored_types == [] and batch.events == []
    assert "invalid envelope" in reasons[0]
    assert "unknown event type 'crm.order.teleported.v1'" in reasons[1]
    assert "in the future" in reasons[3]
    assert reasons[4] == "empty record (no value)"


def test_on_a_skimmed_topic_a_record_too_large_with_its_headers_is_dead_lettered() -> None:
    """In binary mode the attributes' headers count toward the size, in the skim as in the
    decode: a small value under a huge header is not skimmed as its type."""
    padding = b"x" * MAX_EVENT_BYTES
    records = [_binary(0, _refund(), ce_comment=padding), _binary(1, _refund())]
    batch = sort_batch(records, {}, FOLDS, "p", now=NOW, skimmed_topics=SKIMMED)
    [letter] = batch.dead_letters
    assert letter.offset == 0 and "event too large" in letter.reason
    assert batch.ignored_types == ["crm.order.refunded.v1"]


def test_on_a_skimmed_topic_clock_ticks_are_still_read_for_their_time() -> None:
    tick = build_event(
        CLOCK_TICKED, CLOCK_SUBJECT, {"topic": "crm.orders", "partition": 0}, source="c", time=NOW
    )
    batch = sort_batch(
        [RawRecord("crm.orders", 0, 0, CLOCK_SUBJECT.encode(), json.dumps(tick).encode())],
        {},
        FOLDS,
        "p",
        now=NOW,
        skimmed_topics=SKIMMED,
    )
    assert batch.newest_tick == NOW
    assert batch.ignored_types == [CLOCK_TICKED]


def test_a_worker_skims_only_the_topics_that_carry_types_it_does_not_fold() -> None:
    """The broadcast worker reads every journey stage change on crm.experience, of which it
    folds none; the interaction worker folds every type its topics carry, so it skims none."""
    assert BROADCAST.skimmed_topics == {"crm.experience", "crm.customers", "crm.case-signals"}
    assert INTERACTION.skimmed_topics == frozenset()
