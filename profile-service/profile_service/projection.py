"""How events change a customer's profile. Pure: no I/O, time comes from the events.

Contact fields, attributes and identifiers are last-writer-wins by event time, field by field,
so a late or replayed event never overwrites a newer value; two sources setting a field at the
same instant are ordered by the source's name, so the winner never depends on arrival order.
Each field keeps its provenance: the source system and the event time that set it. Purchase
totals are sums and extremes, so they are the same whatever order orders and refunds arrive in.

Time rules read the clock's ticks in the customer's partition of crm.orders
(crm_shared.runtime.clock), never the wall clock, so a rebuild derives what the live run derived.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from crm_shared.contracts.events import (
    SEGMENT_ENTERED,
    SEGMENT_LEFT,
    ClockTicked,
    CustomerRegistered,
    CustomerUpdated,
    Event,
    OrderPlaced,
    OrderRefunded,
    SegmentEntered,
    SegmentLeft,
)
from crm_shared.runtime.derived import Derived, derive
from profile_service.events import PURCHASE_TYPES
from profile_service.references import CONTACT_IDENTIFIERS, normalised_identifier

CONTACT_FIELDS = ("name", "email", "phone", "country")


@dataclass(frozen=True)
class CustomerRecord:
    customer_id: str
    contact: Mapping[str, str | None] = field(default_factory=dict)
    attributes: Mapping[str, str] = field(default_factory=dict)
    identifiers: Mapping[str, str] = field(default_factory=dict)
    field_times: Mapping[str, str] = field(default_factory=dict)
    """ISO event time that last set each field: 'name', 'attributes.tier', 'identifiers.pos'."""
    registered_at: datetime | None = None
    updated_at: datetime | None = None
    field_sources: Mapping[str, str] = field(default_factory=dict)
    """The source system (the event's `source`) that last set each field, keyed as field_times."""


def wins(
    when: str, source: str, times: Mapping[str, str], sources: Mapping[str, str], key: str
) -> bool:
    """Whether a value set at `when` by `source` replaces the field's stored value: the newer
    event time wins; at the same instant the greater source name does (a fixed, documented order,
    so replays and rebuilds pick the same value); the same source at the same instant: the
    value folded last, as before."""
    return (when, source) >= (times.get(key, ""), sources.get(key, ""))


def evolve_customer(record: CustomerRecord | None, event: Event) -> CustomerRecord:
    """Apply one customer event; fields whose stored time is newer than the event stay."""
    data = event.data
    assert isinstance(data, CustomerRegistered | CustomerUpdated)
    current = record or CustomerRecord(customer_id=event.customer_id)
    when, source = event.time.isoformat(), event.source
    times = dict(current.field_times)
    sources = dict(current.field_sources)
    contact = dict(current.contact)
    for name in CONTACT_FIELDS:
        value = getattr(data, name)
        if value is not None and wins(when, source, times, sources, name):
            times[name], sources[name] = when, source
            contact[name] = value
    taken = (times, sources, when, source)
    attributes = _newer_entries(current.attributes, data.attributes, "attributes.", *taken)
    identifiers = _newer_entries(current.identifiers, data.identifiers, "identifiers.", *taken)

    registered_at = current.registered_at
    if isinstance(data, CustomerRegistered) and (
        registered_at is None or event.time < registered_at
    ):
        registered_at = event.time
    updated_at = current.updated_at
    if updated_at is None or event.time > updated_at:
        updated_at = event.time
    return CustomerRecord(
        current.customer_id,
        contact,
        attributes,
        identifiers,
        times,
        registered_at,
        updated_at,
        sources,
    )


def _newer_entries(
    stored: Mapping[str, str],
    incoming: Mapping[str, str],
    prefix: str,
    times: dict[str, str],
    sources: dict[str, str],
    when: str,
    source: str,
) -> Mapping[str, str]:
    """`stored` with the incoming entries that win over what set them ('prefix + key' in
    `times` and `sources`, which record `when` and `source` for each entry taken)."""
    if not incoming:
        return stored
    merged = dict(stored)
    for key, value in incoming.items():
        if wins(when, source, times, sources, prefix + key):
            times[prefix + key], sources[prefix + key] = when, source
            merged[key] = value
    return merged


@dataclass(frozen=True, slots=True)
class IdentifierClaim:
    """A record holds an identifier since `claimed_at` (the event time that set it)."""

    system: str
    value: str
    customer_id: str
    claimed_at: datetime


def identifier_claims(record: CustomerRecord) -> list[IdentifierClaim]:
    """The identifiers a record holds now, each with the time it was set: its ids in other
    systems, and its e-mail and phone as identifiers of those kinds, values normalised
    (references.normalised_identifier). Of the records that claim one (system, value), the
    newest claim owns it, whatever order events were processed in; a record that moved to
    another value no longer claims the old one."""
    entries = [(s, v, f"identifiers.{s}") for s, v in record.identifiers.items()]
    entries += [(n, v, n) for n in CONTACT_IDENTIFIERS if (v := record.contact.get(n))]
    claims: dict[tuple[str, str], IdentifierClaim] = {}
    for system, value, key in entries:
        claimed_at = datetime.fromisoformat(record.field_times[key])
        normalised = normalised_identifier(system, value)
        known = claims.get((system, normalised))
        if known is None or claimed_at > known.claimed_at:
            claims[system, normalised] = IdentifierClaim(
                system, normalised, record.customer_id, claimed_at
            )
    return list(claims.values())


def evolve_customers(
    current: Mapping[str, CustomerRecord], events: Iterable[Event]
) -> dict[str, CustomerRecord]:
    """Fold a batch of customer events; returns only the records that the batch touched."""
    changed: dict[str, CustomerRecord] = {}
    for event in events:
        before = changed.get(event.customer_id) or current.get(event.customer_id)
        changed[event.customer_id] = evolve_customer(before, event)
    return changed


@dataclass
class PurchaseDelta:
    """What a batch adds to one customer's purchase totals (accumulated in place: hot path)."""

    orders: int = 0
    refunds: int = 0
    items: int = 0
    gross_revenue: Decimal = Decimal(0)
    refunded: Decimal = Decimal(0)
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None
    orders_partition: int | None = None
    """The crm.orders partition of the batch's last order or refund: whose ticks are its time."""

    def add(self, event: Event) -> None:
        data = event.data
        if event.partition >= 0:
            self.orders_partition = event.partition
        if type(data) is OrderPlaced:
            self.orders += 1
            self.items += sum(line.quantity for line in data.lines)
            self.gross_revenue += data.total
            if self.first_purchase_at is None or event.time < self.first_purchase_at:
                self.first_purchase_at = event.time
            if self.last_purchase_at is None or event.time > self.last_purchase_at:
                self.last_purchase_at = event.time
        elif type(data) is OrderRefunded:
            self.refunds += 1
            self.items -= sum(line.quantity for line in data.lines)
            self.refunded += data.total


def purchase_deltas(events: Iterable[Event]) -> dict[str, PurchaseDelta]:
    """Sum a batch's orders and refunds per customer."""
    deltas: dict[str, PurchaseDelta] = {}
    for event in events:
        if event.type in PURCHASE_TYPES:
            delta = deltas.get(event.customer_id)
            if delta is None:
                delta = deltas[event.customer_id] = PurchaseDelta()
            delta.add(event)
    return deltas


SOURCE = "profile-service"
"""The source of the events the profile service derives."""
LAPSED = "lapsed"
LAPSE_AFTER = timedelta(days=30)
"""A customer whose last purchase is this old is lapsed. Part of the projection's definition:
a change shows in a rebuild, which derives the segment's history again under the new rule."""


@dataclass(frozen=True)
class Membership:
    """Whether a customer is in a segment; `version` counts the changes (1 = the first entry)."""

    customer_id: str
    segment: str
    member: bool
    version: int
    changed_at: datetime


def is_lapsed(last_purchase_at: datetime | None, now: datetime | None) -> bool:
    """No purchase for LAPSE_AFTER by the partition's clock (no tick yet: not lapsed)."""
    return (
        last_purchase_at is not None and now is not None and now - last_purchase_at >= LAPSE_AFTER
    )


def lapsed_since(last_purchase_at: datetime) -> datetime:
    """When, in event time, a customer became lapsed: not when a tick happened to show it."""
    return last_purchase_at + LAPSE_AFTER


def change_membership(
    current: Membership | None, customer_id: str, segment: str, member: bool, at: datetime
) -> Membership | None:
    """The next membership when it changes, else None."""
    if (current is not None and current.member) == member:
        return None
    version = (current.version if current is not None else 0) + 1
    return Membership(customer_id, segment, member, version, at)


def segment_event(change: Membership, cause: Event, reason: str) -> Derived:
    """The derived event announcing a change; its id comes from the cause and the version."""
    data = SegmentEntered if change.member else SegmentLeft
    return derive(
        cause,
        SEGMENT_ENTERED if change.member else SEGMENT_LEFT,
        change.customer_id,
        data(segment=change.segment, version=change.version, reason=reason),
        source=SOURCE,
        time=change.changed_at,
        part=f"{change.segment}:{change.version}",
    )


@dataclass(frozen=True)
class LapseCandidate:
    """A customer of a partition whose last purchase is older than the newest tick allows."""

    customer_id: str
    last_purchase_at: datetime
    membership: Membership | None


def ticks_by_partition(ticks: Iterable[Event], topic: str) -> dict[int, list[Event]]:
    """The ticks of one topic, per partition, in log order."""
    found: dict[int, list[Event]] = {}
    for tick in ticks:
        data = tick.data
        assert isinstance(data, ClockTicked)
        if data.topic == topic:
            found.setdefault(data.partition, []).append(tick)
    return found


def lapses(
    candidates: Iterable[LapseCandidate], ticks: Sequence[Event]
) -> list[tuple[Membership, Event]]:
    """Who lapses at which of a partition's ticks (in log order): each candidate at the first
    tick that makes it lapsed, as if the ticks had been folded one at a time."""
    changes: list[tuple[Membership, Event]] = []
    for candidate in candidates:
        tick = next(t for t in ticks if is_lapsed(candidate.last_purchase_at, t.time))
        change = change_membership(
            candidate.membership,
            candidate.customer_id,
            LAPSED,
            True,
            lapsed_since(candidate.last_purchase_at),
        )
        if change is not None:
            changes.append((change, tick))
    return changes


def purchase_lapses(
    events: Iterable[Event],
    before: Mapping[str, tuple[datetime | None, Membership | None]],
    clocks: Mapping[int, datetime],
) -> list[tuple[Membership, Event, str]]:
    """The lapsed-segment changes a batch's purchases make, each with its cause and reason.

    A purchase can end a lapse, and an old first purchase can start one at once (by the clock of
    its partition). The events are replayed one at a time in log order from the state before the
    batch, so the memberships, their times and the derived events' ids are the same whatever the
    batch boundaries: a rebuild in large batches must equal the live fold.
    """
    state = dict(before)
    changes: list[tuple[Membership, Event, str]] = []
    for event in events:
        if event.type not in PURCHASE_TYPES:
            continue
        last, current = state.get(event.customer_id, (None, None))
        if type(event.data) is OrderPlaced and (last is None or event.time > last):
            last = event.time
        if last is None:
            continue  # refunds alone: no purchase to lapse from
        found = lapse_change(current, event.customer_id, last, clocks.get(event.partition), event)
        if found is not None:
            current = found[0]
            changes.append((found[0], event, found[1]))
        state[event.customer_id] = (last, current)
    return changes


def lapse_change(
    current: Membership | None,
    customer_id: str,
    last_purchase_at: datetime | None,
    now: datetime | None,
    cause: Event,
) -> tuple[Membership, str] | None:
    """The lapsed-segment change, with its reason, of a customer whose last purchase (of all
    of a person's records) and clock are these, judged when `cause` happened; None when none."""
    lapsed = is_lapsed(last_purchase_at, now)
    since = lapsed_since(last_purchase_at) if last_purchase_at and lapsed else cause.time
    change = change_membership(current, customer_id, LAPSED, lapsed, since)
    if change is None:
        return None
    if last_purchase_at is None:
        return change, "no purchase"
    if lapsed:
        return change, lapse_reason(last_purchase_at)
    return change, f"purchased on {last_purchase_at.date()}"


def lapse_reason(last_purchase_at: datetime) -> str:
    return f"no purchase for {LAPSE_AFTER.days} days (last on {last_purchase_at.date()})"
