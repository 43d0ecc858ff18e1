"""The event contract: the CloudEvents 1.0 envelope and one frozen pydantic model per event type.

Every producer (SDK, gateway, demo loader) and every consumer validates through `parse_event`
and `build_event`, so what is accepted on the way in is exactly what a projection can fold.
Readers are tolerant (`extra="ignore"`): fields are added, never renamed. A changed meaning is a
new type with a new version suffix, and old versions stay registered.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_EVENT_BYTES = 1024 * 1024
"""Largest encoded event we accept: bigger records are dead-lettered, never folded."""

CustomerId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]
ProductId = Annotated[str, Field(min_length=1, max_length=64)]
Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=4)]
EventSource = Annotated[str, Field(min_length=1, max_length=256)]
"""The CloudEvents `source`: the publishing system (shop, pos, ...)."""


class Channel(StrEnum):
    """Ways of reaching a customer, both directions (the seeds' voice, e-mail, SMS, mail, ...)."""

    EMAIL = "email"
    SMS = "sms"
    PHONE = "phone"
    PUSH = "push"
    MAIL = "mail"
    WEB = "web"
    STORE = "store"
    CHAT = "chat"
    SOCIAL = "social"


class _EventData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class CustomerRegistered(_EventData):
    """A customer became known to a company system (shop account, loyalty card, POS)."""

    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=40)
    country: str | None = Field(default=None, max_length=80)
    identifiers: dict[str, str] = Field(
        default_factory=dict, description="Ids of this customer in other systems, by system name"
    )
    attributes: dict[str, str] = Field(default_factory=dict, description="Free-form attributes")


class CustomerUpdated(_EventData):
    """Some attributes of a customer changed; absent fields are left as they were."""

    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=40)
    country: str | None = Field(default=None, max_length=80)
    identifiers: dict[str, str] = Field(default_factory=dict)
    attributes: dict[str, str] = Field(default_factory=dict)


class OrderLine(_EventData):
    product_id: ProductId
    description: str | None = Field(default=None, max_length=300)
    quantity: int = Field(gt=0)
    unit_price: Money


def _lines_total(lines: tuple[OrderLine, ...]) -> Decimal:
    return sum((line.unit_price * line.quantity for line in lines), Decimal(0))


class OrderPlaced(_EventData):
    """A customer bought something, on any channel."""

    order_id: str = Field(min_length=1, max_length=64)
    lines: tuple[OrderLine, ...] = Field(min_length=1, max_length=2000)
    currency: str = Field(default="GBP", min_length=3, max_length=3)
    channel: Channel = Channel.WEB

    @property
    def total(self) -> Decimal:
        return _lines_total(self.lines)


class OrderRefunded(_EventData):
    """Goods of an order were returned or the order was cancelled; money went back."""

    refund_id: str = Field(min_length=1, max_length=64)
    order_id: str | None = Field(default=None, max_length=64, description="The refunded order")
    lines: tuple[OrderLine, ...] = Field(min_length=1, max_length=2000)
    currency: str = Field(default="GBP", min_length=3, max_length=3)
    reason: str | None = Field(default=None, max_length=300)

    @property
    def total(self) -> Decimal:
        return _lines_total(self.lines)


class ProductViewed(_EventData):
    """A customer looked at a product (web, app, kiosk)."""

    product_id: ProductId
    channel: Channel = Channel.WEB
    session_id: str | None = Field(default=None, max_length=128)


class ContactLogged(_EventData):
    """One touchpoint between the customer and an employee or department."""

    channel: Channel
    direction: Literal["inbound", "outbound"]
    department: str = Field(min_length=1, max_length=80)
    employee_id: str | None = Field(default=None, max_length=80)
    topic: str = Field(min_length=1, max_length=200)
    outcome: str = Field(
        min_length=1, max_length=80, description="e.g. resolved, escalated, refused"
    )
    note: str | None = Field(default=None, max_length=4000)


class FeedbackGiven(_EventData):
    """Praise, a complaint or a suggestion, with a satisfaction score from 1 (worst) to 5."""

    score: int = Field(ge=1, le=5)
    kind: Literal["praise", "complaint", "suggestion", "comment"] = "comment"
    comment: str | None = Field(default=None, max_length=4000)
    channel: Channel = Channel.WEB


class QuietHours(_EventData):
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    timezone: str = Field(default="UTC", max_length=64, description="IANA time zone name")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (KeyError, ValueError, OSError):
            raise ValueError(f"unknown IANA time zone {name!r}") from None
        return name


class ChannelPreferenceSet(_EventData):
    """The customer chose how to be reached: channels in order of preference, and quiet hours."""

    channels: tuple[Channel, ...] = Field(min_length=1, max_length=len(Channel))
    quiet_hours: QuietHours | None = None

    @field_validator("channels")
    @classmethod
    def _distinct(cls, channels: tuple[Channel, ...]) -> tuple[Channel, ...]:
        if len(set(channels)) != len(channels):
            raise ValueError("each channel may be listed once")
        return channels


class ConsentGranted(_EventData):
    """Permission to use the customer's data or contact them for a purpose, on a channel or all."""

    purpose: str = Field(min_length=1, max_length=80, description="e.g. marketing, newsletter")
    channel: Channel | None = Field(default=None, description="None means every channel")


class ConsentRevoked(_EventData):
    """A refusal of contact: as much a fact about the customer as a purchase."""

    purpose: str = Field(min_length=1, max_length=80)
    channel: Channel | None = None


EVENT_TYPES: dict[str, type[_EventData]] = {
    "crm.customer.registered.v1": CustomerRegistered,
    "crm.customer.updated.v1": CustomerUpdated,
    "crm.order.placed.v1": OrderPlaced,
    "crm.order.refunded.v1": OrderRefunded,
    "crm.product.viewed.v1": ProductViewed,
    "crm.contact.logged.v1": ContactLogged,
    "crm.feedback.given.v1": FeedbackGiven,
    "crm.channel_preference.set.v1": ChannelPreferenceSet,
    "crm.consent.granted.v1": ConsentGranted,
    "crm.consent.revoked.v1": ConsentRevoked,
}
"""Every event type on the wire, by its CloudEvents `type`."""


class CloudEvent(BaseModel):
    """CloudEvents 1.0 structured JSON envelope; `data` is checked against `type` separately."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=128)
    source: EventSource
    type: str = Field(min_length=1, max_length=128)
    subject: CustomerId
    time: datetime
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]

    @field_validator("time")
    @classmethod
    def _aware(cls, time: datetime) -> datetime:
        if time.tzinfo is None:
            raise ValueError("time must carry a UTC offset, e.g. 2024-05-01T10:00:00Z")
        return time


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event: the envelope fields a projection reads, and its typed data."""

    id: str
    source: str
    type: str
    customer_id: str
    time: datetime
    data: _EventData


class InvalidEvent(ValueError):
    """The record is not an event we can fold; the message says why, for the dead-letter topic."""


def parse_event(raw: bytes) -> Event:
    """Decode and validate one encoded record; raise InvalidEvent with a readable reason."""
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"event too large: {len(raw)} bytes, limit {MAX_EVENT_BYTES}")
    try:
        envelope = CloudEvent.model_validate_json(raw)
    except ValidationError as error:
        raise InvalidEvent(_describe("envelope", error)) from None
    return _typed(envelope)


def validate_event(document: Mapping[str, Any]) -> Event:
    """Validate an already-decoded envelope (the gateway's JSON body), same rules as parse_event."""
    try:
        envelope = CloudEvent.model_validate(document)
    except ValidationError as error:
        raise InvalidEvent(_describe("envelope", error)) from None
    return _typed(envelope)


def _typed(envelope: CloudEvent) -> Event:
    model = EVENT_TYPES.get(envelope.type)
    if model is None:
        raise InvalidEvent(f"unknown event type {envelope.type!r}")
    try:
        data = model.model_validate(envelope.data)
    except ValidationError as error:
        raise InvalidEvent(_describe(f"data of {envelope.type}", error)) from None
    return Event(
        id=envelope.id,
        source=envelope.source,
        type=envelope.type,
        customer_id=envelope.subject,
        time=envelope.time.astimezone(UTC),
        data=data,
    )


def _describe(where: str, error: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in issue['loc']) or '(root)'}: {issue['msg']}"
        for issue in error.errors(include_url=False)[:5]
    )
    return f"invalid {where}: {problems}"


MAX_FUTURE_SKEW = timedelta(minutes=5)
"""How far past the receiver's clock an event may be dated (clocks of publishers drift)."""


def check_not_future(event: Event, now: datetime, max_skew: timedelta = MAX_FUTURE_SKEW) -> None:
    """Refuse an event dated after now + max_skew: under last-writer-wins by event time, an
    event dated 2099 would otherwise win forever. Raises InvalidEvent with the reason."""
    if event.time > now + max_skew:
        raise InvalidEvent(
            f"time {event.time.isoformat()} is in the future: more than "
            f"{max_skew.total_seconds():g} s after {now.astimezone(UTC).isoformat()}"
        )


def build_event(
    event_type: str,
    customer_id: str,
    data: Mapping[str, Any] | BaseModel,
    *,
    source: str,
    time: datetime | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Wrap data in a validated envelope, ready to encode; the id defaults to a fresh UUID."""
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else dict(data)
    document = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "subject": customer_id,
        "time": (time or datetime.now(UTC)).isoformat(),
        "datacontenttype": "application/json",
        "data": payload,
    }
    validate_event(document)
    return document


def encode_event(document: Mapping[str, Any]) -> bytes:
    """The wire form of an envelope: compact strict JSON (no NaN), at most MAX_EVENT_BYTES."""
    try:
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as error:
        raise InvalidEvent(f"not encodable as JSON: {error}") from None
    value = text.encode()
    if len(value) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"event too large: {len(value)} bytes, limit {MAX_EVENT_BYTES}")
    return value
