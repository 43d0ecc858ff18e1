"""Every touchpoint on the timeline with its structured columns; v1 contacts read as v2."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from crm_shared.contracts.events import (
    MAX_FUTURE_SKEW,
    ContactLogged,
    ContactOutcome,
    InvalidEvent,
    build_event,
)
from crm_shared.contracts.upcast import contact_logged_v2, department_code, outcome_from_text
from interaction_service.projection import (
    CHANNEL_PHRASES,
    as_of_horizon,
    summary_deltas,
    timeline_entry,
    unlisted_outcomes,
)
from tests.unit.events_factory import at, event

CONTACT_V2 = {
    "channel": "meeting",
    "direction": "outbound",
    "department": "key-accounts",
    "employee_id": "E7",
    "topic": "contract renewal",
    "outcome": "callback_scheduled",
}


def _v1_contact(outcome: str, department: str = "Customer Service", **more: str) -> ContactLogged:
    return ContactLogged(
        channel="phone",  # type: ignore[arg-type]
        direction="inbound",
        department=department,
        topic="late parcel",
        outcome=outcome,
        **more,  # type: ignore[arg-type]
    )


def _columns(event_type: str, data: dict[str, object]) -> tuple[object, ...]:
    entry = timeline_entry(event(event_type, "C1", data))
    return (
        entry.kind,
        entry.channel,
        entry.direction,
        entry.department,
        entry.employee_id,
        entry.topic,
        entry.outcome,
        entry.summary,
    )


@pytest.mark.parametrize(
    ("event_type", "data", "columns"),
    [
        (
            "crm.contact.logged.v2",
            CONTACT_V2,
            (
                "contact",
                "meeting",
                "outbound",
                "key-accounts",
                "E7",
                "contract renewal",
                "callback_scheduled",
                "outbound meeting from key-accounts: contract renewal -> callback scheduled",
            ),
        ),
        (
            "crm.session.recorded.v1",
            {
                "session_id": "S9",
                "channel": "app",
                "duration_seconds": 125,
                "pages_viewed": 4,
                "entry_page": "/sale",
            },
            (
                "session",
                "app",
                "inbound",
                None,
                None,
                "/sale",
                None,
                "app session S9: 4 pages in 2 min 5 s",
            ),
        ),
        (
            "crm.message.outcome.recorded.v1",
            {
                "message_id": "M1",
                "campaign_id": "spring",
                "channel": "email",
                "purpose": "marketing",
                "outcome": "bounced",
                "reason": "mailbox full",
            },
            (
                "message",
                "email",
                "outbound",
                None,
                None,
                "marketing",
                "bounced",
                "marketing email message M1 of campaign spring: bounced (mailbox full)",
            ),
        ),
        (
            "crm.consent.revoked.v1",
            {"purpose": "newsletter", "channel": "sms"},
            (
                "consent",
                "sms",
                "inbound",
                None,
                None,
                "newsletter",
                "revoked",
                "consent to newsletter on sms revoked",
            ),
        ),
        (
            "crm.consent.granted.v1",
            {"purpose": "marketing"},
            (
                "consent",
                None,
                "inbound",
                None,
                None,
                "marketing",
                "granted",
                "consent to marketing on every channel granted",
            ),
        ),
        (
            "crm.channel_preference.set.v1",
            {"channels": ["sms", "email"], "quiet_hours": {"start": "22:00", "end": "07:00"}},
            (
                "preference",
                "sms",
                "inbound",
                None,
                None,
                None,
                None,
                "channel preference: sms, email; quiet hours 22:00-07:00 UTC",
            ),
        ),
        (
            "crm.order.cancelled.v1",
            {"order_id": "O5", "reason": "changed mind"},
            (
                "cancellation",
                None,
                None,
                None,
                None,
                None,
                None,
                "order O5 cancelled (changed mind)",
            ),
        ),
        (
            "crm.feedback.given.v1",
            {"score": 2, "kind": "complaint", "channel": "store"},
            (
                "feedback",
                "store",
                "inbound",
                None,
                None,
                "complaint",
                None,
                "feedback 2/5 complaint",
            ),
        ),
        (
            "crm.consent.recorded.v2",
            {
                "purpose": "marketing",
                "channel": "email",
                "state": "denied",
                "capture_method": "call_centre",
            },
            (
                "consent",
                "email",
                "inbound",
                None,
                None,
                "marketing",
                "denied",
                "consent to marketing on email denied (call centre)",
            ),
        ),
        (
            "crm.do_not_contact.added.v1",
            {"channel": "phone", "reason": "legal", "note": "court order"},
            (
                "consent",
                "phone",
                None,
                None,
                None,
                "legal",
                "do_not_contact",
                "do not contact on phone: legal (court order)",
            ),
        ),
        (
            "crm.do_not_contact.removed.v1",
            {},
            (
                "consent",
                None,
                None,
                None,
                None,
                None,
                "do_not_contact_lifted",
                "do-not-contact lifted on any channel",
            ),
        ),
        (
            "crm.channel_preference.set.v2",
            {"channels": [{"channel": "push"}, {"channel": "mail"}], "timezone": "Asia/Tokyo"},
            (
                "preference",
                "push",
                "inbound",
                None,
                None,
                None,
                None,
                "channel preference (Asia/Tokyo): push, mail",
            ),
        ),
    ],
)
def test_each_touchpoint_carries_its_structured_columns(
    event_type: str, data: dict[str, object], columns: tuple[object, ...]
) -> None:
    assert _columns(event_type, data) == columns


def test_meetings_and_app_messages_have_a_phrase() -> None:
    assert CHANNEL_PHRASES["meeting"] == "meeting"  # type: ignore[index]
    assert CHANNEL_PHRASES["app"] == "app message"  # type: ignore[index]


def test_a_v1_contact_gets_a_department_code_and_a_listed_outcome_and_the_words_said() -> None:
    entry = timeline_entry(
        event(
            "crm.contact.logged.v1",
            "C1",
            {
                "channel": "phone",
                "direction": "inbound",
                "department": "Customer Service",
                "topic": "late parcel",
                "outcome": "Call-Back",
            },
        )
    )
    assert (entry.department, entry.outcome) == ("customer-service", "callback_scheduled")
    assert entry.summary == "inbound phone call to customer-service: late parcel -> Call-Back"
    assert '"outcome":"Call-Back"' in entry.details


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        ("refused", ContactOutcome.REFUSED),
        (" Refused ", ContactOutcome.REFUSED),
        ("REFUSAL", ContactOutcome.REFUSED),
        ("no answer", ContactOutcome.NO_ANSWER),
        ("information-given", ContactOutcome.INFORMATION_GIVEN),
        ("Complaint registered", ContactOutcome.COMPLAINT_REGISTERED),
        ("sold", ContactOutcome.SALE),
        ("refused to pay", ContactOutcome.OTHER),
        ("customer hung up", ContactOutcome.OTHER),
    ],
)
def test_a_free_text_outcome_maps_to_a_listed_value_or_other(
    text: str, outcome: ContactOutcome
) -> None:
    assert outcome_from_text(text) is outcome


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("support", "support"),
        ("Customer Service", "customer-service"),
        ("  After-Sales / Returns ", "after-sales-returns"),
        ("Ünïcode", "n-code"),
        ("***", "unknown"),
    ],
)
def test_a_free_text_department_becomes_a_slug(text: str, code: str) -> None:
    assert department_code(text) == code


def test_a_v2_contact_upcasts_to_itself() -> None:
    v2 = event("crm.contact.logged.v2", "C1", CONTACT_V2).data
    assert contact_logged_v2(v2) is v2  # type: ignore[arg-type]


def test_a_v1_contact_upcasts_with_every_other_field_kept() -> None:
    upcast = contact_logged_v2(_v1_contact("escalation", employee_id="E1", note="angry"))
    assert upcast.model_dump() == {
        "channel": "phone",
        "direction": "inbound",
        "department": "customer-service",
        "employee_id": "E1",
        "topic": "late parcel",
        "outcome": ContactOutcome.ESCALATED,
        "note": "angry",
    }


@pytest.mark.parametrize(
    ("department", "outcome", "problem"),
    [
        ("Customer Service", "resolved", "department"),
        ("support", "kind of resolved", "outcome"),
    ],
)
def test_a_v2_contact_refuses_free_text(department: str, outcome: str, problem: str) -> None:
    with pytest.raises(InvalidEvent, match=f"crm.contact.logged.v2: {problem}"):
        build_event(
            "crm.contact.logged.v2",
            "C1",
            {**CONTACT_V2, "department": department, "outcome": outcome},
            source="crm",
        )


def test_refusals_count_the_structured_outcome_of_both_versions() -> None:
    def v1(outcome: str) -> dict[str, str]:
        return {
            "channel": "phone",
            "direction": "outbound",
            "department": "sales",
            "topic": "offer",
            "outcome": outcome,
        }

    events = [
        event("crm.contact.logged.v1", "C1", v1("Refused ")),
        event("crm.contact.logged.v1", "C1", v1("declined")),
        event("crm.contact.logged.v1", "C1", v1("refused to pay")),
        event("crm.contact.logged.v2", "C1", {**CONTACT_V2, "outcome": "refused"}),
        event("crm.contact.logged.v2", "C1", CONTACT_V2),
        event("crm.consent.revoked.v1", "C1", {"purpose": "marketing"}),
    ]
    totals = summary_deltas(events)["C1"]
    assert (totals.contacts, totals.refusals, totals.outbound, totals.touchpoints) == (5, 3, 5, 6)


def test_unlisted_outcomes_are_the_v1_texts_read_as_other() -> None:
    events = [
        event(
            "crm.contact.logged.v1",
            "C1",
            {
                "channel": "chat",
                "direction": "inbound",
                "department": "support",
                "topic": "t",
                "outcome": outcome,
            },
        )
        for outcome in ("resolved", "customer hung up", "Other")
    ]
    assert unlisted_outcomes(events) == ["customer hung up"]


def test_the_recorded_time_is_the_log_time_or_else_the_event_time() -> None:
    contact = event("crm.contact.logged.v2", "C1", CONTACT_V2, minutes=5)
    assert timeline_entry(contact).recorded_at == at(5)
    logged = replace(contact, log_time_ms=1_717_230_600_250)
    assert timeline_entry(logged).recorded_at == datetime(2024, 6, 1, 8, 30, 0, 250000, tzinfo=UTC)


def test_nothing_is_recorded_more_than_the_allowed_skew_before_it_happened() -> None:
    """A record logged before its event time (a producer's clock ahead) counts as recorded at
    most MAX_FUTURE_SKEW early, so an as-of read may stop at as_of + MAX_FUTURE_SKEW."""
    contact = event("crm.contact.logged.v2", "C1", CONTACT_V2, minutes=60)
    logged_early = replace(contact, log_time_ms=int(at(0).timestamp() * 1000))
    recorded = timeline_entry(logged_early).recorded_at
    assert recorded == at(60) - MAX_FUTURE_SKEW
    assert as_of_horizon(recorded) == at(60)
