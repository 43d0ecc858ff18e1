"""How touchpoints become a customer's timeline and contact summary. Pure: no I/O, time comes
from the events.

Each event is one timeline row keyed by its (source, id), so a duplicate is the same row. The
contact summary is counts, sums and extremes only, so it is the same whatever order events
arrive in. The timeline's page cursor is also here: an opaque encoding of the last row's
position (event time, then event key), so pages stay stable while late events arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import singledispatch
from typing import Literal, NamedTuple

from crm_shared.contracts.events import (
    SCORE_SCALES,
    Channel,
    ContactLogged,
    Event,
    FeedbackGiven,
    FeedbackGivenV2,
    Measure,
    OrderLine,
    OrderPlaced,
    OrderRefunded,
)

Kind = Literal["contact", "feedback", "order", "refund"]
KINDS: tuple[Kind, ...] = ("contact", "feedback", "order", "refund")

SUMMARY_MAX_CHARS = 200
COMMENT_MAX_CHARS = 80
REFUSED = "refused"

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


class Description(NamedTuple):
    kind: Kind
    channel: Channel | None
    summary: str


class TimelineEntry(NamedTuple):
    """One row of a customer's timeline; a tuple, so a batch's rows transpose into columns."""

    source: str
    event_id: str
    customer_id: str
    occurred_at: datetime
    kind: Kind
    event_type: str
    channel: Channel | None
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


@singledispatch
def describe(data: object) -> Description:
    """Kind, channel and human summary of one touchpoint's data."""
    raise TypeError(f"{type(data).__name__} is not a touchpoint")


@describe.register
def _contact(data: ContactLogged) -> Description:
    preposition = "to" if data.direction == "inbound" else "from"
    summary = (
        f"{data.direction} {CHANNEL_PHRASES[data.channel]} {preposition} {data.department}: "
        f"{data.topic} -> {data.outcome}"
    )
    return Description("contact", data.channel, summary)


@describe.register
def _feedback(data: FeedbackGiven) -> Description:
    summary = f"feedback {data.score}/5 {data.kind}"
    if data.comment and data.comment.strip():
        summary += f": {_shorten(data.comment, COMMENT_MAX_CHARS)}"
    return Description("feedback", data.channel, summary)


@describe.register
def _scored_feedback(data: FeedbackGivenV2) -> Description:
    summary = f"feedback {data.measure} {data.score}/{SCORE_SCALES[data.measure][1]} {data.kind}"
    if data.comment and data.comment.strip():
        summary += f": {_shorten(data.comment, COMMENT_MAX_CHARS)}"
    return Description("feedback", data.channel, summary)


@describe.register
def _order(data: OrderPlaced) -> Description:
    summary = f"order {data.order_id}: {_lines_and_money(data.lines, data.total, data.currency)}"
    return Description("order", data.channel, summary)


@describe.register
def _refund(data: OrderRefunded) -> Description:
    of_order = f" of order {data.order_id}" if data.order_id else ""
    summary = (
        f"refund {data.refund_id}{of_order}: "
        f"{_lines_and_money(data.lines, data.total, data.currency)}"
    )
    if data.reason and data.reason.strip():
        summary += f" ({data.reason.strip()})"
    return Description("refund", None, summary)


def timeline_entry(event: Event) -> TimelineEntry:
    kind, channel, summary = describe(event.data)
    return TimelineEntry(
        source=event.source,
        event_id=event.id,
        customer_id=event.customer_id,
        occurred_at=event.time,
        kind=kind,
        event_type=event.type,
        channel=channel,
        summary=_shorten(summary, SUMMARY_MAX_CHARS),
        details=event.data.model_dump_json(),
    )


def timeline_entries(events: Iterable[Event]) -> list[TimelineEntry]:
    """One entry per distinct event of the batch."""
    return [timeline_entry(event) for event in distinct(events)]


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
        if type(data) is ContactLogged:
            self.contacts += 1
            if data.direction == "inbound":
                self.inbound += 1
            else:
                self.outbound += 1
            self.refusals += data.outcome.strip().lower() == REFUSED
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


# ----------------------------------------------------------------------------- page cursor


class TimelinePosition(NamedTuple):
    """Where a row sits in a timeline: event time, then the event key to break ties."""

    occurred_at: datetime
    source: str
    event_id: str


class InvalidCursor(ValueError):
    """A cursor this API did not issue (or one that was altered); the message says why."""


CURSOR_MAX_CHARS = 1024
_CURSOR_ALPHABET = re.compile(r"^[A-Za-z0-9_-]+$")


def encode_cursor(position: TimelinePosition) -> str:
    """Opaque, URL-safe form of a position: base64url (unpadded) of a small JSON array."""
    document = [position.occurred_at.isoformat(), position.source, position.event_id]
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> TimelinePosition:
    """The position a cursor stands for; raise InvalidCursor with the reason."""
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
        and len(document) == 3
        and all(isinstance(part, str) for part in document)
        # No stored row has a NUL (PostgreSQL text cannot hold one), and one would fail the query.
        and not any("\x00" in part for part in document)
    ):
        raise InvalidCursor("the cursor does not hold a timeline position")
    when, source, event_id = document
    try:
        occurred_at = datetime.fromisoformat(when)
    except ValueError:
        raise InvalidCursor("the cursor's time is not an ISO 8601 time") from None
    if occurred_at.tzinfo is None:
        raise InvalidCursor("the cursor's time has no UTC offset")
    try:
        occurred_at = occurred_at.astimezone(UTC)
    except OverflowError:
        raise InvalidCursor("the cursor's time is out of range") from None
    return TimelinePosition(occurred_at, source, event_id)


def next_cursor(fetched: Sequence[TimelinePosition], limit: int) -> str | None:
    """The cursor after a page; `fetched` is up to limit + 1 rows, the extra one meaning more."""
    return encode_cursor(fetched[limit - 1]) if len(fetched) > limit else None
