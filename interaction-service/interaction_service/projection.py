"""How touchpoints become a customer's timeline and contact summary. Pure: no I/O, time comes
from the events.

Each event is one timeline row keyed by its (source, id), so a duplicate is the same row. The
contact summary is counts, sums and extremes only, so it is the same whatever order events
arrive in. The timeline's queries and page cursors are also here: a cursor is an opaque
encoding of the last row's position (event time, then event key), of the query's filters and of
the instant the read is as of, so the pages of one read are one stable list while late events
arrive (see docs/decisions.md, "Timeline").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import singledispatch
from typing import Literal, NamedTuple

from crm_shared.contracts.events import (
    MAX_FUTURE_SKEW,
    SCORE_SCALES,
    CaseAssigned,
    CaseClosed,
    CaseEscalated,
    CaseOpened,
    CaseReopened,
    CaseResolved,
    CaseTransferred,
    Channel,
    ChannelPreferenceSet,
    ChannelPreferenceSetV2,
    ConsentGranted,
    ConsentRecorded,
    ConsentRevoked,
    ContactLogged,
    ContactLoggedV2,
    ContactOutcome,
    DoNotContactAdded,
    DoNotContactRemoved,
    Event,
    FeedbackGiven,
    FeedbackGivenV2,
    Measure,
    MessageOutcomeRecorded,
    OrderCancelled,
    OrderLine,
    OrderPlaced,
    OrderRefunded,
    SessionRecorded,
)
from crm_shared.contracts.timeline import TIMELINE_KINDS, TimelineKind
from crm_shared.contracts.upcast import department_code, outcome_from_text

Kind = TimelineKind
KINDS = TIMELINE_KINDS
Direction = Literal["inbound", "outbound"]

SUMMARY_MAX_CHARS = 200
COMMENT_MAX_CHARS = 80

CHANNEL_PHRASES: dict[Channel, str] = {
    Channel.EMAIL: "email",
    Channel.SMS: "SMS",
    Channel.PHONE: "phone call",
    Channel.PUSH: "push notification",
    Channel.MAIL: "letter",
    Channel.WEB: "web contact",
    Channel.STORE: "store visit",
    Channel.CHAT: "chat",
    Channel.SOCIAL: "social media message",
    Channel.MEETING: "meeting",
    Channel.APP: "app message",
}
"""How a contact on each channel reads in a summary: 'inbound phone call to support: ...'."""

EventKey = tuple[str, str]
"""(source, id): the idempotency key of an event, and the key of its timeline row."""


def event_key(event: Event) -> EventKey:
    return (event.source, event.id)


def distinct(events: Iterable[Event]) -> list[Event]:
    """The events without repeated keys, first copy kept, batch order kept."""
    seen: set[EventKey] = set()
    unique: list[Event] = []
    for event in events:
        key = event_key(event)
        if key not in seen:
            seen.add(key)
            unique.append(event)
    return unique


# ----------------------------------------------------------------------------- timeline


class Touchpoint(NamedTuple):
    """What a timeline row says of one event: its kind, the structured columns a timeline is
    filtered by, and a one-line summary for people."""

    kind: Kind
    summary: str
    channel: Channel | None = None
    direction: Direction | None = None
    department: str | None = None
    employee_id: str | None = None
    topic: str | None = None
    outcome: str | None = None


class TimelineEntry(NamedTuple):
    """One row of a customer's timeline; a tuple, so a batch's rows transpose into columns."""

    source: str
    event_id: str
    customer_id: str
    occurred_at: datetime
    recorded_at: datetime
    """When the log recorded the event (its Kafka timestamp): what an as-of read goes by."""
    kind: Kind
    event_type: str
    channel: Channel | None
    direction: Direction | None
    department: str | None
    employee_id: str | None
    topic: str | None
    outcome: str | None
    summary: str
    details: str
    """The event's data as a JSON object (stored as jsonb)."""


def _shorten(text: str, width: int) -> str:
    """One line of at most `width` characters; an ellipsis marks a cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


def _lines_and_money(lines: Sequence[OrderLine], total: Decimal, currency: str) -> str:
    count = len(lines)
    return f"{count} line{'' if count == 1 else 's'}, {total:.2f} {currency}"


def _with_reason(summary: str, reason: str | None) -> str:
    return f"{summary} ({reason.strip()})" if reason and reason.strip() else summary


@singledispatch
def describe(data: object) -> Touchpoint:
    """The touchpoint one event's data stands for."""
    raise TypeError(f"{type(data).__name__} is not a touchpoint")


def _contact(
    data: ContactLogged | ContactLoggedV2,
    department: str,
    outcome: ContactOutcome,
    outcome_words: str,
) -> Touchpoint:
    preposition = "to" if data.direction == "inbound" else "from"
    summary = (
        f"{data.direction} {CHANNEL_PHRASES[data.channel]} {preposition} "
        f"{department}: {data.topic} -> {outcome_words}"
    )
    return Touchpoint(
        "contact",
        summary,
        data.channel,
        data.direction,
        department,
        data.employee_id,
        data.topic,
        outcome.value,
    )


@describe.register
def _contact_v1(data: ContactLogged) -> Touchpoint:
    # The columns come from the tolerant mapping (crm_shared.contracts.upcast, the same as
    # contact_logged_v2 without building the model); the summary keeps the words said.
    return _contact(
        data,
        department_code(data.department),
        outcome_from_text(data.outcome),
        data.outcome.strip(),
    )


@describe.register
def _contact_v2(data: ContactLoggedV2) -> Touchpoint:
    return _contact(data, data.department, data.outcome, data.outcome.value.replace("_", " "))


@describe.register
def _feedback(data: FeedbackGiven) -> Touchpoint:
    summary = f"feedback {data.score}/5 {data.kind}"
    if data.comment and data.comment.strip():
        summary += f": {_shorten(data.comment, COMMENT_MAX_CHARS)}"
    return Touchpoint("feedback", summary, data.channel, "inbound", topic=data.kind)


@describe.register
def _scored_feedback(data: FeedbackGivenV2) -> Touchpoint:
    summary = f"feedback {data.measure} {data.score}/{SCORE_SCALES[data.measure][1]} {data.kind}"
    if data.comment and data.comment.strip():
        summary += f": {_shorten(data.comment, COMMENT_MAX_CHARS)}"
    return Touchpoint(
        "feedback", summary, data.channel, "inbound", data.department, topic=data.kind
    )


@describe.register
def _order(data: OrderPlaced) -> Touchpoint:
    summary = f"order {data.order_id}: {_lines_and_money(data.lines, data.total, data.currency)}"
    return Touchpoint("order", summary, data.channel, "inbound")


@describe.register
def _refund(data: OrderRefunded) -> Touchpoint:
    of_order = f" of order {data.order_id}" if data.order_id else ""
    summary = (
        f"refund {data.refund_id}{of_order}: "
        f"{_lines_and_money(data.lines, data.total, data.currency)}"
    )
    return Touchpoint("refund", _with_reason(summary, data.reason))


@describe.register
def _cancellation(data: OrderCancelled) -> Touchpoint:
    return Touchpoint("cancellation", _with_reason(f"order {data.order_id} cancelled", data.reason))


@describe.register
def _session(data: SessionRecorded) -> Touchpoint:
    minutes, seconds = divmod(data.duration_seconds, 60)
    pages = f"{data.pages_viewed} page{'' if data.pages_viewed == 1 else 's'}"
    summary = f"{data.channel} session {data.session_id}: {pages} in {minutes} min {seconds} s"
    return Touchpoint("session", summary, data.channel, "inbound", topic=data.entry_page)


@describe.register
def _message(data: MessageOutcomeRecorded) -> Touchpoint:
    of_campaign = f" of campaign {data.campaign_id}" if data.campaign_id else ""
    summary = f"{data.purpose} {data.channel} message {data.message_id}{of_campaign}: "
    return Touchpoint(
        "message",
        _with_reason(summary + data.outcome.value, data.reason),
        data.channel,
        "outbound",
        topic=data.purpose,
        outcome=data.outcome.value,
    )


def _consent(data: ConsentGranted | ConsentRevoked, outcome: str) -> Touchpoint:
    on = f"on {data.channel}" if data.channel else "on every channel"
    summary = f"consent to {data.purpose} {on} {outcome}"
    return Touchpoint(
        "consent", summary, data.channel, "inbound", topic=data.purpose, outcome=outcome
    )


@describe.register
def _consent_granted(data: ConsentGranted) -> Touchpoint:
    return _consent(data, "granted")


@describe.register
def _consent_revoked(data: ConsentRevoked) -> Touchpoint:
    return _consent(data, "revoked")


@describe.register
def _consent_recorded(data: ConsentRecorded) -> Touchpoint:
    on = f"on {data.channel}" if data.channel else "on every channel"
    how = data.capture_method.value.replace("_", " ")
    summary = f"consent to {data.purpose} {on} {data.state} ({how})"
    return Touchpoint(
        "consent", summary, data.channel, "inbound", topic=data.purpose, outcome=data.state
    )


@describe.register
def _do_not_contact_added(data: DoNotContactAdded) -> Touchpoint:
    on = f"on {data.channel}" if data.channel else "on any channel"
    summary = _with_reason(f"do not contact {on}: {data.reason}", data.note)
    return Touchpoint("consent", summary, data.channel, topic=data.reason, outcome="do_not_contact")


@describe.register
def _do_not_contact_removed(data: DoNotContactRemoved) -> Touchpoint:
    on = f"on {data.channel}" if data.channel else "on any channel"
    summary = _with_reason(f"do-not-contact lifted {on}", data.note)
    return Touchpoint("consent", summary, data.channel, outcome="do_not_contact_lifted")


@describe.register
def _preference_v2(data: ChannelPreferenceSetV2) -> Touchpoint:
    summary = f"channel preference ({data.timezone}): " + ", ".join(
        setting.channel for setting in data.channels
    )
    return Touchpoint("preference", summary, data.channels[0].channel, "inbound")


@describe.register
def _preference(data: ChannelPreferenceSet) -> Touchpoint:
    summary = "channel preference: " + ", ".join(data.channels)
    if data.quiet_hours is not None:
        quiet = data.quiet_hours
        summary += f"; quiet hours {quiet.start}-{quiet.end} {quiet.timezone}"
    return Touchpoint("preference", summary, data.channels[0], "inbound")


# A case step's outcome is the step itself ("opened", ..., "closed"): a closed list, like the
# steps. Whether the case's status allowed it is the case's history to say (accepted or rejected);
# the timeline records what was done with the customer, as every other touchpoint.


def _owner(department: str, employee_id: str | None) -> str:
    return f"{employee_id} in {department}" if employee_id else f"the {department} queue"


@describe.register
def _case_opened(data: CaseOpened) -> Touchpoint:
    summary = (
        f"{data.kind} {data.case_id} opened ({data.priority}) for "
        f"{_owner(data.department, data.employee_id)}: {data.topic}"
    )
    return Touchpoint(
        "case",
        summary,
        data.channel,
        "inbound",
        data.department,
        data.employee_id,
        data.topic,
        "opened",
    )


@describe.register
def _case_assigned(data: CaseAssigned) -> Touchpoint:
    summary = f"case {data.case_id} assigned to {_owner(data.department, data.employee_id)}"
    return Touchpoint(
        "case",
        summary,
        department=data.department,
        employee_id=data.employee_id,
        outcome="assigned",
    )


@describe.register
def _case_transferred(data: CaseTransferred) -> Touchpoint:
    origin = _owner(data.from_department, data.from_employee_id)
    summary = (
        f"case {data.case_id} transferred from {origin} "
        f"to {_owner(data.to_department, data.to_employee_id)} ({data.reason.strip()})"
    )
    return Touchpoint(
        "case",
        summary,
        department=data.to_department,
        employee_id=data.to_employee_id,
        outcome="transferred",
    )


@describe.register
def _case_escalated(data: CaseEscalated) -> Touchpoint:
    summary = f"case {data.case_id} escalated to level {data.level} ({data.reason.strip()})"
    return Touchpoint("case", summary, outcome="escalated")


@describe.register
def _case_resolved(data: CaseResolved) -> Touchpoint:
    first = " in the first contact" if data.first_contact else ""
    summary = f"case {data.case_id} resolved{first}: {_shorten(data.resolution, COMMENT_MAX_CHARS)}"
    return Touchpoint("case", summary, outcome="resolved")


@describe.register
def _case_reopened(data: CaseReopened) -> Touchpoint:
    summary = f"case {data.case_id} reopened ({data.reason.strip()})"
    return Touchpoint("case", summary, outcome="reopened")


@describe.register
def _case_closed(data: CaseClosed) -> Touchpoint:
    return Touchpoint(
        "case", _with_reason(f"case {data.case_id} closed", data.reason), outcome="closed"
    )


def recorded_at(event: Event) -> datetime:
    """When the log recorded the event (its event time when it did not come from Kafka), but
    never more than MAX_FUTURE_SKEW before its event time: nothing is known before it happens,
    give or take the clock drift the platform accepts. So a read as of an instant needs to look
    only at entries dated up to that instant plus the skew (`as_of_horizon`)."""
    if event.log_time_ms < 0:
        return event.time
    logged = _EPOCH + timedelta(milliseconds=event.log_time_ms)
    earliest = event.time - MAX_FUTURE_SKEW
    return logged if logged > earliest else earliest


def as_of_horizon(as_of: datetime) -> datetime:
    """The latest event time an entry recorded by `as_of` can have (see `recorded_at`)."""
    return as_of + MAX_FUTURE_SKEW


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timeline_entry(event: Event) -> TimelineEntry:
    kind, summary, channel, direction, department, employee_id, topic, outcome = describe(
        event.data
    )
    # Positional: keyword arguments to a named tuple cost a third of the row on the hot path.
    return TimelineEntry(
        event.source,
        event.id,
        event.customer_id,
        event.time,
        recorded_at(event),
        kind,
        event.type,
        channel,
        direction,
        department,
        employee_id,
        topic,
        outcome,
        _shorten(summary, SUMMARY_MAX_CHARS),
        event.data.model_dump_json(),
    )


def timeline_entries(events: Iterable[Event]) -> list[TimelineEntry]:
    """One entry per distinct event of the batch."""
    return [timeline_entry(event) for event in distinct(events)]


def unlisted_outcomes(events: Iterable[Event]) -> list[str]:
    """The free-text outcomes of v1 contacts that the tolerant mapping read as `other`, while
    they said something else: what producers should be moved to v2 or a synonym for."""
    return [
        data.outcome
        for data in (event.data for event in events)
        if type(data) is ContactLogged
        and outcome_from_text(data.outcome) is ContactOutcome.OTHER
        and data.outcome.strip().lower() != ContactOutcome.OTHER
    ]


# ----------------------------------------------------------------------------- contact summary


def _earliest(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


def _latest(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


@dataclass
class ContactTotals:
    """A customer's contact summary, or what one batch adds to it (the same arithmetic).

    `contacts` and the contact times count logged contacts only; `touchpoints` and the
    touchpoint times count every timeline entry (contacts, feedback, orders, refunds).
    A batch's totals are accumulated in place (`add`): it is the hot path.
    """

    touchpoints: int = 0
    contacts: int = 0
    inbound: int = 0
    outbound: int = 0
    refusals: int = 0
    complaints: int = 0
    feedback: int = 0
    feedback_score_sum: int = 0
    first_contact_at: datetime | None = None
    last_contact_at: datetime | None = None
    first_touchpoint_at: datetime | None = None
    last_touchpoint_at: datetime | None = None

    @property
    def average_satisfaction(self) -> float | None:
        """Mean feedback score (1 to 5) to two decimals; None without any feedback."""
        return average_score(self.feedback_score_sum, self.feedback)

    def add(self, event: Event) -> None:
        """Count one touchpoint in these totals."""
        when = event.time
        self.touchpoints += 1
        self.first_touchpoint_at = _earliest(self.first_touchpoint_at, when)
        self.last_touchpoint_at = _latest(self.last_touchpoint_at, when)
        data = event.data
        # type() rather than isinstance(): pydantic models check instances through ABCMeta.
        if type(data) is ContactLogged or type(data) is ContactLoggedV2:
            outcome = (
                outcome_from_text(data.outcome) if type(data) is ContactLogged else data.outcome
            )
            self.contacts += 1
            if data.direction == "inbound":
                self.inbound += 1
            else:
                self.outbound += 1
            self.refusals += outcome is ContactOutcome.REFUSED
            self.first_contact_at = _earliest(self.first_contact_at, when)
            self.last_contact_at = _latest(self.last_contact_at, when)
        elif type(data) is FeedbackGiven:
            self.feedback += 1
            self.feedback_score_sum += data.score
            self.complaints += data.kind == "complaint"
        elif type(data) is FeedbackGivenV2:
            # Only CSAT scores are on the 1-5 scale that average_satisfaction averages.
            self.complaints += data.kind == "complaint"
            if data.measure is Measure.CSAT:
                self.feedback += 1
                self.feedback_score_sum += data.score


def average_score(score_sum: int, count: int) -> float | None:
    """score_sum / count rounded to two decimals, None when count is 0."""
    return round(score_sum / count, 2) if count > 0 else None


def summary_deltas(events: Iterable[Event]) -> dict[str, ContactTotals]:
    """What a batch adds to each customer's summary; a repeated event counts once."""
    deltas: dict[str, ContactTotals] = {}
    for event in distinct(events):
        totals = deltas.get(event.customer_id)
        if totals is None:
            totals = deltas[event.customer_id] = ContactTotals()
        totals.add(event)
    return deltas


# ----------------------------------------------------------------------------- queries and cursors


class TimelinePosition(NamedTuple):
    """Where a row sits in a timeline: event time, then the event key to break ties."""

    occurred_at: datetime
    source: str
    event_id: str


@dataclass(frozen=True)
class TimelineQuery:
    """Which rows of a timeline a read wants, and in which order. Empty tuples mean any value;
    the period is [occurred_from, occurred_before) in event time; `recorded_after` keeps only
    rows the log recorded after that instant (what arrived since a previous read)."""

    kinds: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    departments: tuple[str, ...] = ()
    occurred_from: datetime | None = None
    occurred_before: datetime | None = None
    recorded_after: datetime | None = None
    newest_first: bool = True

    def __post_init__(self) -> None:
        for name in ("kinds", "event_types", "channels", "departments"):
            # One spelling per filter, whatever order or repetition the values came in.
            object.__setattr__(self, name, tuple(sorted(set(getattr(self, name)))))

    def fingerprint(self) -> str:
        """A short digest of the filters and order: a cursor carries it, so that it is not used
        with other filters (its position would mean another place in another list)."""
        document = [
            list(self.kinds),
            list(self.event_types),
            list(self.channels),
            list(self.departments),
            *(_instant(t) for t in (self.occurred_from, self.occurred_before, self.recorded_after)),
            self.newest_first,
        ]
        raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


def _instant(time: datetime | None) -> str | None:
    return None if time is None else time.astimezone(UTC).isoformat()


class PageCursor(NamedTuple):
    """Where the next page starts, for which query, and the instant the whole read is as of:
    every page of one read shows the timeline as the log had recorded it at that instant."""

    position: TimelinePosition
    query: str
    """The fingerprint of the query that issued the cursor."""
    as_of: datetime


class InvalidCursor(ValueError):
    """A cursor this API did not issue (or one that was altered); the message says why."""


class CursorMismatch(ValueError):
    """A valid cursor used with other filters or another as_of than the read that issued it."""


CURSOR_MAX_CHARS = 1024
_CURSOR_ALPHABET = re.compile(r"^[A-Za-z0-9_-]+$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")


def encode_cursor(cursor: PageCursor) -> str:
    """Opaque, URL-safe form of a cursor: base64url (unpadded) of a small JSON array."""
    position = cursor.position
    document = [
        position.occurred_at.isoformat(),
        position.source,
        position.event_id,
        cursor.query,
        cursor.as_of.isoformat(),
    ]
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _aware_time(text: str, what: str) -> datetime:
    try:
        time = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidCursor(f"the cursor's {what} is not an ISO 8601 time") from None
    if time.tzinfo is None:
        raise InvalidCursor(f"the cursor's {what} has no UTC offset")
    try:
        return time.astimezone(UTC)
    except OverflowError:
        raise InvalidCursor(f"the cursor's {what} is out of range") from None


def decode_cursor(cursor: str) -> PageCursor:
    """The cursor a string stands for; raise InvalidCursor with the reason."""
    if not cursor:
        raise InvalidCursor("the cursor is empty")
    if len(cursor) > CURSOR_MAX_CHARS:
        raise InvalidCursor(f"the cursor is longer than {CURSOR_MAX_CHARS} characters")
    if not _CURSOR_ALPHABET.match(cursor):
        raise InvalidCursor("the cursor has characters outside of URL-safe base64")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = json.loads(raw.decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("the cursor does not decode to a timeline position") from None
    if not (
        isinstance(document, list)
        and len(document) == 5
        and all(isinstance(part, str) for part in document)
        # No stored row has a NUL (PostgreSQL text cannot hold one), and one would fail the query.
        and not any("\x00" in part for part in document)
        and _FINGERPRINT.match(document[3])
    ):
        raise InvalidCursor("the cursor does not hold a timeline position")
    when, source, event_id, query, as_of = document
    position = TimelinePosition(_aware_time(when, "time"), source, event_id)
    return PageCursor(position, query, _aware_time(as_of, "as_of"))


def check_cursor(cursor: PageCursor, query: TimelineQuery, as_of: datetime | None) -> None:
    """Refuse a cursor issued for another query or another as_of (CursorMismatch)."""
    if cursor.query != query.fingerprint():
        raise CursorMismatch(
            "the cursor belongs to a read with other filters or another order; pass the same "
            "filters as the first page, or start again without a cursor"
        )
    if as_of is not None and as_of != cursor.as_of:
        raise CursorMismatch(
            f"the cursor belongs to a read as of {cursor.as_of.isoformat()}; pass that as_of "
            "or none"
        )


def next_cursor(
    fetched: Sequence[TimelinePosition], limit: int, query: TimelineQuery, as_of: datetime
) -> str | None:
    """The cursor after a page; `fetched` is up to limit + 1 rows, the extra one meaning more."""
    if len(fetched) <= limit:
        return None
    return encode_cursor(PageCursor(fetched[limit - 1], query.fingerprint(), as_of))
