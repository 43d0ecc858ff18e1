"""Interaction projection: timeline rows, order-independent contact summaries, page cursors."""

from __future__ import annotations

import base64
import itertools
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from crm_shared.contracts.events import Channel, Event
from interaction_service.projection import (
    CHANNEL_PHRASES,
    SUMMARY_MAX_CHARS,
    ContactTotals,
    CursorMismatch,
    InvalidCursor,
    PageCursor,
    TimelinePosition,
    TimelineQuery,
    average_score,
    check_cursor,
    decode_cursor,
    encode_cursor,
    next_cursor,
    summary_deltas,
    timeline_entries,
    timeline_entry,
)
from tests.unit.events_factory import at, event, order, refund


def _contact(
    customer: str,
    minutes: float,
    *,
    direction: str = "inbound",
    channel: str = "phone",
    outcome: str = "resolved",
    topic: str = "delivery delay",
    department: str = "support",
    event_id: str | None = None,
) -> Event:
    return event(
        "crm.contact.logged.v1",
        customer,
        {
            "channel": channel,
            "direction": direction,
            "department": department,
            "topic": topic,
            "outcome": outcome,
        },
        minutes=minutes,
        event_id=event_id,
    )


def _feedback(
    customer: str, minutes: float, score: int, kind: str = "comment", comment: str | None = None
) -> Event:
    data: dict[str, object] = {"score": score, "kind": kind, "channel": "email"}
    if comment is not None:
        data["comment"] = comment
    return event("crm.feedback.given.v1", customer, data, minutes=minutes)


# ----------------------------------------------------------------------------- timeline


def test_a_contact_reads_as_direction_channel_department_topic_and_outcome() -> None:
    entry = timeline_entry(_contact("C1", 0))
    assert entry.kind == "contact"
    assert entry.channel == Channel.PHONE
    assert entry.summary == "inbound phone call to support: delivery delay -> resolved"
    assert entry.occurred_at == at(0)
    assert entry.event_type == "crm.contact.logged.v1"


def test_an_outbound_contact_comes_from_the_department() -> None:
    entry = timeline_entry(
        _contact(
            "C1",
            0,
            direction="outbound",
            channel="email",
            department="sales",
            topic="renewal offer",
            outcome="refused",
        )
    )
    assert entry.summary == "outbound email from sales: renewal offer -> refused"


def test_every_channel_has_a_phrase() -> None:
    assert set(CHANNEL_PHRASES) == set(Channel)


def test_an_order_reads_as_its_id_line_count_and_total() -> None:
    placed = order("C1", "536365", ("P1", 6, "2.55"), ("P2", 6, "3.39"), minutes=0)
    entry = timeline_entry(placed)
    assert entry.kind == "order"
    assert entry.channel == Channel.WEB
    assert entry.summary == "order 536365: 2 lines, 35.64 GBP"


def test_a_single_line_order_says_line() -> None:
    assert (
        timeline_entry(order("C1", "O1", ("P1", 1, "10"))).summary == "order O1: 1 line, 10.00 GBP"
    )


def test_a_refund_names_its_order_and_reason_and_has_no_channel() -> None:
    refunded = event(
        "crm.order.refunded.v1",
        "C1",
        {
            "refund_id": "R1",
            "order_id": "536365",
            "lines": [{"product_id": "P1", "quantity": 2, "unit_price": "2.55"}],
            "reason": "damaged",
        },
    )
    entry = timeline_entry(refunded)
    assert entry.kind == "refund"
    assert entry.channel is None
    assert entry.summary == "refund R1 of order 536365: 1 line, 5.10 GBP (damaged)"
    assert timeline_entry(refund("C1", "R2", ("P1", 3, "1"))).summary == (
        "refund R2: 1 line, 3.00 GBP"
    )


def test_feedback_reads_as_score_kind_and_the_start_of_the_comment() -> None:
    entry = timeline_entry(_feedback("C1", 0, 2, "complaint", "parcel  arrived\nlate again"))
    assert entry.kind == "feedback"
    assert entry.channel == Channel.EMAIL
    assert entry.summary == "feedback 2/5 complaint: parcel arrived late again"
    assert timeline_entry(_feedback("C1", 0, 5, "praise")).summary == "feedback 5/5 praise"


def test_a_long_comment_is_cut_with_an_ellipsis() -> None:
    summary = timeline_entry(_feedback("C1", 0, 1, "complaint", "x" * 500)).summary
    assert summary.endswith("…")
    assert summary.startswith("feedback 1/5 complaint: xxx")
    assert len(summary) <= len("feedback 1/5 complaint: ") + 80


def test_no_summary_is_longer_than_the_limit() -> None:
    long = _contact("C1", 0, topic="t" * 200, department="d" * 80, outcome="o" * 80)
    summary = timeline_entry(long).summary
    assert len(summary) == SUMMARY_MAX_CHARS
    assert summary.endswith("…")


def test_details_hold_the_event_data() -> None:
    entry = timeline_entry(order("C1", "O1", ("P1", 2, "2.50")))
    details = json.loads(entry.details)  # stored as jsonb: a JSON object
    assert details["order_id"] == "O1"
    assert details["lines"] == [
        {"product_id": "P1", "description": None, "quantity": 2, "unit_price": "2.50"}
    ]
    assert details["currency"] == "GBP"
    assert details["channel"] == "web"


def test_a_duplicate_within_a_batch_is_one_row_and_order_is_kept() -> None:
    first = _contact("C1", 5, event_id="same")
    again = _contact("C1", 5, event_id="same")
    other = _feedback("C1", 1, 4)
    entries = timeline_entries([first, other, again])
    assert [(e.source, e.event_id) for e in entries] == [("test", "same"), ("test", other.id)]


def test_the_same_id_from_two_sources_is_two_rows() -> None:
    a = event("crm.feedback.given.v1", "C1", {"score": 3}, event_id="1", source="shop")
    b = event("crm.feedback.given.v1", "C1", {"score": 3}, event_id="1", source="pos")
    assert len(timeline_entries([a, b])) == 2


def test_only_touchpoints_have_a_timeline_row() -> None:
    registered = event("crm.customer.registered.v1", "C1", {"name": "Ann"})
    with pytest.raises(TypeError, match="CustomerRegistered is not a touchpoint"):
        timeline_entry(registered)


# ----------------------------------------------------------------------------- contact summary


def _history() -> list[Event]:
    return [
        _contact("C1", 30, direction="inbound"),
        _contact("C1", 10, direction="outbound", outcome="Refused "),
        _contact("C1", 20, direction="outbound", outcome="refused"),
        _feedback("C1", 5, 2, "complaint", "late"),
        _feedback("C1", 50, 5, "praise"),
        _feedback("C1", 40, 4, "suggestion"),
        order("C1", "O1", ("P1", 1, "1"), minutes=60),
        refund("C1", "R1", ("P1", 1, "1"), minutes=1),
        _contact("C2", 7),
    ]


def test_the_summary_counts_contacts_by_direction_complaints_refusals_and_feedback() -> None:
    c1 = summary_deltas(_history())["C1"]
    assert (c1.touchpoints, c1.contacts, c1.inbound, c1.outbound) == (8, 3, 1, 2)
    assert (c1.refusals, c1.complaints) == (2, 1)
    assert (c1.feedback, c1.feedback_score_sum) == (3, 11)
    assert c1.average_satisfaction == 3.67


def test_contact_times_come_from_logged_contacts_and_touchpoint_times_from_everything() -> None:
    c1 = summary_deltas(_history())["C1"]
    assert (c1.first_contact_at, c1.last_contact_at) == (at(10), at(30))
    assert (c1.first_touchpoint_at, c1.last_touchpoint_at) == (at(1), at(60))


def test_customers_are_summed_separately() -> None:
    c2 = summary_deltas(_history())["C2"]
    assert (c2.touchpoints, c2.contacts, c2.inbound) == (1, 1, 1)
    assert c2.average_satisfaction is None


def test_the_summary_does_not_depend_on_arrival_order() -> None:
    events = _history()
    expected = summary_deltas(events)
    for permutation in itertools.islice(itertools.permutations(events), 0, 5000, 97):
        assert summary_deltas(permutation) == expected
    assert summary_deltas(reversed(events)) == expected


def test_a_late_contact_moves_the_first_contact_time_back() -> None:
    deltas = summary_deltas([_contact("C1", 30), _contact("C1", -600)])
    assert deltas["C1"].first_contact_at == at(-600)
    assert deltas["C1"].last_contact_at == at(30)


def test_a_duplicate_within_a_batch_counts_once() -> None:
    once = _feedback("C1", 0, 1, "complaint")
    deltas = summary_deltas(
        [
            once,
            once,
            _contact("C1", 1, outcome="refused", event_id="x"),
            _contact("C1", 1, outcome="refused", event_id="x"),
        ]
    )
    c1 = deltas["C1"]
    assert (c1.touchpoints, c1.feedback, c1.complaints, c1.refusals) == (2, 1, 1, 1)
    assert c1.feedback_score_sum == 1


def test_orders_and_refunds_are_touchpoints_but_not_contacts() -> None:
    c1 = summary_deltas([order("C1", "O1", ("P1", 1, "1"), minutes=3)])["C1"]
    assert (c1.touchpoints, c1.contacts, c1.feedback) == (1, 0, 0)
    assert c1.first_contact_at is None and c1.last_contact_at is None
    assert c1.first_touchpoint_at == c1.last_touchpoint_at == at(3)


def test_an_empty_batch_changes_no_summary() -> None:
    assert summary_deltas([]) == {}


def test_average_satisfaction_is_none_without_feedback_and_rounded_to_two_places() -> None:
    assert ContactTotals().average_satisfaction is None
    assert average_score(0, 0) is None
    assert average_score(10, 3) == 3.33
    assert average_score(5, 1) == 5.0
    assert ContactTotals(feedback=4, feedback_score_sum=7).average_satisfaction == 1.75


# ----------------------------------------------------------------------------- page cursor

POSITION = TimelinePosition(datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC), "shop", "e-1/ü")
AS_OF = datetime(2024, 6, 1, 8, 30, tzinfo=UTC)
QUERY = TimelineQuery(kinds=("contact",), channels=("phone", "email"))
CURSOR = PageCursor(POSITION, QUERY.fingerprint(), AS_OF)


def test_a_cursor_round_trips_to_the_same_position_query_and_as_of() -> None:
    assert decode_cursor(encode_cursor(CURSOR)) == CURSOR


def test_a_cursor_is_url_safe_and_unpadded() -> None:
    cursor = encode_cursor(CURSOR._replace(position=TimelinePosition(at(0), "s?/+=&", "id sp")))
    assert cursor.replace("-", "").replace("_", "").isalnum()
    assert "=" not in cursor


def test_a_cursor_keeps_the_offset_as_the_same_instant() -> None:
    paris = timezone(timedelta(hours=2))
    position = TimelinePosition(datetime(2024, 5, 1, 12, 0, tzinfo=paris), "s", "1")
    decoded = decode_cursor(encode_cursor(PageCursor(position, "0" * 16, AS_OF.astimezone(paris))))
    assert decoded.position.occurred_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert decoded.as_of == AS_OF


def _b64(document: object) -> str:
    raw = json.dumps(document).encode() if not isinstance(document, bytes) else document
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


T = "2024-05-01T10:00:00+00:00"
FP = "0123456789abcdef"


@pytest.mark.parametrize(
    ("cursor", "reason"),
    [
        ("", "empty"),
        ("a" * 2000, "longer than"),
        ("abc=", "outside of URL-safe base64"),
        ("ab+c", "outside of URL-safe base64"),
        ("a", "does not decode"),
        (_b64(b"\xff\xfe"), "does not decode"),
        (_b64(b"not json"), "does not decode"),
        (_b64({"t": T}), "does not hold"),
        (_b64([T, "s", "1"]), "does not hold"),
        (_b64([T, "s", 1, FP, T]), "does not hold"),
        (_b64([T, "s\u0000", "1", FP, T]), "does not hold"),
        (_b64([T, "s", "1", "not-a-digest", T]), "does not hold"),
        (_b64(["yesterday", "s", "1", FP, T]), "time is not an ISO 8601 time"),
        (_b64(["2024-05-01T10:00:00", "s", "1", FP, T]), "time has no UTC offset"),
        (_b64(["0001-01-01T00:00:00+05:00", "s", "1", FP, T]), "time is out of range"),
        (_b64([T, "s", "1", FP, "2024-05-01T10:00:00"]), "as_of has no UTC offset"),
    ],
)
def test_a_bad_cursor_is_refused_with_its_reason(cursor: str, reason: str) -> None:
    with pytest.raises(InvalidCursor, match=reason):
        decode_cursor(cursor)


def test_next_cursor_points_at_the_last_row_of_a_full_page_for_the_same_query() -> None:
    rows = [TimelinePosition(at(-i), "s", str(i)) for i in range(4)]
    assert decode_cursor(next_cursor(rows, 3, QUERY, AS_OF) or "") == PageCursor(
        rows[2], QUERY.fingerprint(), AS_OF
    )


def test_there_is_no_next_cursor_when_nothing_follows() -> None:
    rows = [TimelinePosition(at(-i), "s", str(i)) for i in range(3)]
    assert next_cursor(rows, 3, QUERY, AS_OF) is None
    assert next_cursor([], 50, QUERY, AS_OF) is None


def test_the_fingerprint_ignores_the_order_and_repetition_of_filter_values() -> None:
    same = TimelineQuery(channels=("email", "phone", "email"), kinds=("contact",))
    assert same.fingerprint() == QUERY.fingerprint()


@pytest.mark.parametrize(
    "other",
    [
        TimelineQuery(kinds=("contact",), channels=("phone",)),
        TimelineQuery(kinds=("contact",), channels=("phone", "email"), newest_first=False),
        TimelineQuery(kinds=("contact",), channels=("phone", "email"), departments=("sales",)),
        TimelineQuery(kinds=("contact",), channels=("phone", "email"), occurred_from=at(0)),
        TimelineQuery(kinds=("contact",), channels=("phone", "email"), recorded_after=at(0)),
    ],
)
def test_a_cursor_used_with_other_filters_is_refused(other: TimelineQuery) -> None:
    with pytest.raises(CursorMismatch, match="other filters"):
        check_cursor(CURSOR, other, None)


def test_a_cursor_is_accepted_with_its_own_query_and_as_of_or_none() -> None:
    check_cursor(CURSOR, QUERY, None)
    check_cursor(CURSOR, QUERY, AS_OF)
    with pytest.raises(CursorMismatch, match="as of 2024-06-01T08:30:00"):
        check_cursor(CURSOR, QUERY, AS_OF + timedelta(seconds=1))
