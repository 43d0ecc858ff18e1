"""Which dead letters an operator picks, how they are grouped, and what a re-drive sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import build_event, encode_event
from crm_shared.ops.redrive import (
    UNKNOWN_TYPE,
    Filters,
    Group,
    Letter,
    group_letters,
    letter_from,
    letter_json,
    parse_args,
    plan_redrive,
    select,
)

FAILED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
_dlq_offsets = iter(range(10_000))


def _order(customer: str = "C1", event_id: str = "e1") -> bytes:
    return encode_event(
        build_event(
            "crm.order.placed.v1",
            customer,
            {"order_id": "O1", "lines": [{"product_id": "P", "quantity": 1, "unit_price": "1"}]},
            source="shop",
            time=datetime(2024, 5, 1, tzinfo=UTC),
            event_id=event_id,
        )
    )


def _letter(
    value: bytes = b"",
    *,
    reason: str = "invalid envelope: (root): Invalid JSON",
    consumer: str = "profile",
    topic: str = "crm.orders",
    partition: int = 3,
    offset: int = 100,
    key: bytes | None = b"C1",
    failed_at: datetime = FAILED,
) -> Letter:
    """A letter as the workers write it, read back as the dead-letter topic returns it."""
    value = value or _order()
    headers = DeadLetter(value, key, reason, topic, partition, offset, consumer).headers(failed_at)
    return letter_from(0, next(_dlq_offsets), 0, key, value, headers)


def _processing_failed(event_id: str = "e1", consumer: str = "profile") -> Letter:
    """What a record that validated but failed in the database leaves: no origin recorded."""
    return _letter(
        _order(event_id=event_id),
        reason="processing failed: CheckViolationError: violates check constraint",
        consumer=consumer,
        topic="",
        partition=-1,
        offset=-1,
    )


def test_a_letter_reads_its_headers_and_the_event_in_its_value() -> None:
    letter = _letter(reason="boom", consumer="interaction", partition=7, offset=42)
    assert (letter.reason, letter.consumer) == ("boom", "interaction")
    assert (letter.origin_topic, letter.origin_partition, letter.origin_offset) == (
        "crm.orders",
        7,
        42,
    )
    assert (letter.type, letter.source, letter.id, letter.subject) == (
        "crm.order.placed.v1",
        "shop",
        "e1",
        "C1",
    )
    assert letter.failed_at == FAILED


def test_a_value_that_is_no_cloud_event_has_type_unknown() -> None:
    letter = _letter(b'{"specversion": "1.0", "id": ')
    assert letter.type == UNKNOWN_TYPE
    assert (letter.id, letter.subject) == (None, None)
    assert letter.redrive_topic == "crm.orders"


def test_missing_or_malformed_headers_fall_back_to_unknown_origin_and_kafka_time() -> None:
    letter = letter_from(
        2, 9, 1_700_000_000_000, None, b"x", [("crm.partition", b"seven"), ("crm.reason", b"r")]
    )
    assert (letter.origin_topic, letter.origin_partition, letter.origin_offset) == ("", -1, -1)
    assert letter.failed_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert letter.redrive_topic is None


def test_a_letter_without_origin_topic_goes_back_to_its_types_topic() -> None:
    letter = _processing_failed()
    assert letter.origin_topic == ""
    assert letter.redrive_topic == "crm.orders"
    assert letter.origin == "crm.orders"


def test_a_rejected_source_file_row_is_not_routable() -> None:
    letter = _letter(b"[{}]", topic="source:online_retail.csv", partition=-1, offset=17)
    assert letter.redrive_topic is None
    plan = plan_redrive([letter])
    assert plan.sends == []
    assert plan.skipped == {"origin 'source:online_retail.csv' is not an event topic": 1}


def test_filters_choose_by_reason_substring_consumer_type_topic_and_time() -> None:
    letters = [
        _letter(reason="invalid data of crm.order.placed.v1", consumer="profile"),
        _letter(b"garbage", reason="invalid envelope", consumer="interaction"),
        _processing_failed(consumer="recommendation"),
        _letter(topic="crm.contacts", failed_at=FAILED + timedelta(days=1)),
    ]

    def chosen(**wanted: object) -> list[int]:
        return [letters.index(found) for found in select(letters, Filters(**wanted))]

    assert chosen() == [0, 1, 2, 3]
    assert chosen(reason="INVALID") == [0, 1, 3]
    assert chosen(consumer="interaction") == [1]
    assert chosen(type=UNKNOWN_TYPE) == [1]
    assert chosen(type="crm.order.placed.v1", consumer="recommendation") == [2]
    assert chosen(topic="crm.orders") == [0, 1, 2]  # the third derived from its type
    assert chosen(since=FAILED + timedelta(hours=1)) == [3]
    assert not Filters().any()
    assert Filters(since=FAILED).any()


def test_letters_are_grouped_by_reason_consumer_and_type_largest_first() -> None:
    letters = [
        *(_letter(b"garbage", reason="bad", consumer=c) for c in ("profile", "interaction")),
        _letter(b"garbage", reason="bad", consumer="interaction"),
        _letter(reason="bad", consumer="profile"),
    ]
    assert group_letters(letters) == [
        (Group("bad", "interaction", UNKNOWN_TYPE), 2),
        (Group("bad", "profile", "crm.order.placed.v1"), 1),
        (Group("bad", "profile", UNKNOWN_TYPE), 1),
    ]


def test_letters_whose_reasons_differ_only_after_the_first_line_share_a_group() -> None:
    failed = "processing failed: CheckViolationError: violates check constraint"
    letters = [
        _letter(reason=f"{failed}\nDETAIL:  Failing row contains (C1, 1)."),
        _letter(reason=f"{failed}\nDETAIL:  Failing row contains (C2, 7)."),
    ]
    assert group_letters(letters) == [(Group(failed, "profile", "crm.order.placed.v1"), 2)]


def test_a_record_refused_by_three_consumers_is_sent_once() -> None:
    letters = [
        _letter(consumer=c, partition=3, offset=100)
        for c in ("profile", "interaction", "recommendation")
    ]
    letters.append(_letter(consumer="profile", partition=3, offset=101))
    plan = plan_redrive(letters)
    assert [(s.letter.origin_offset, s.letters) for s in plan.sends] == [(100, 3), (101, 1)]
    assert plan.duplicates == 2
    assert all(s.topic == "crm.orders" and s.partition == 3 for s in plan.sends)


def test_letters_without_origin_are_the_same_record_when_they_carry_the_same_event() -> None:
    plan = plan_redrive(
        [
            _processing_failed("e1", "profile"),
            _processing_failed("e1", "interaction"),
            _processing_failed("e2", "profile"),
        ]
    )
    assert [(s.letter.id, s.letters) for s in plan.sends] == [("e1", 2), ("e2", 1)]
    assert plan.sends[0].partition is None  # unknown: the key chooses, as for any new record


def test_a_resend_is_keyed_by_the_subject_else_by_the_key_it_had() -> None:
    letters = [_letter(key=b"wrong"), _letter(b"junk", offset=7, key=b"K9")]
    [event, garbage] = plan_redrive(letters).sends
    assert event.key == b"C1"
    assert garbage.key == b"K9"
    assert garbage.letter.value == b"junk"  # the bytes, unchanged


def test_letters_older_than_the_deduplication_window_are_held_back() -> None:
    old = _letter(offset=1, failed_at=FAILED - timedelta(days=8))
    recent = _letter(offset=2)
    held = plan_redrive([old, recent], window_start=FAILED - timedelta(days=7))
    assert [s.letter for s in held.sends] == [recent]
    assert sum(held.skipped.values()) == 1
    assert [s.letter for s in plan_redrive([old, recent]).sends] == [old, recent]


def test_json_listing_names_origin_dead_letter_position_and_event() -> None:
    line = letter_json(_processing_failed())
    assert line["origin"] == {"topic": "crm.orders", "partition": None, "offset": None}
    assert set(line["deadletter"]) == {"partition", "offset"}
    assert (line["consumer"], line["type"], line["id"], line["subject"]) == (
        "profile",
        "crm.order.placed.v1",
        "e1",
        "C1",
    )


def test_publish_needs_a_filter_or_all() -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args(["publish", "--dry-run"])
    assert refused.value.code == 2
    assert parse_args(["publish", "--all"]).filters == Filters()
    chosen = parse_args(["publish", "--consumer", "profile", "--since", "2024-06-01T12:00"])
    assert chosen.filters == Filters(consumer="profile", since=FAILED)
    assert parse_args(["list"]).command == "list"
