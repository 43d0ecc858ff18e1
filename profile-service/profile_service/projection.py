"""How events change a customer's profile. Pure: no I/O, time comes from the events.

Contact fields, attributes and identifiers are last-writer-wins by event time, field by field,
so a late or replayed event never overwrites a newer value. Purchase totals are sums and
extremes, so they are the same whatever order orders and refunds arrive in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from crm_shared.events import CustomerRegistered, CustomerUpdated, Event, OrderPlaced, OrderRefunded

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


def evolve_customer(record: CustomerRecord | None, event: Event) -> CustomerRecord:
    """Apply one customer event; fields whose stored time is newer than the event stay."""
    data = event.data
    assert isinstance(data, CustomerRegistered | CustomerUpdated)
    current = record or CustomerRecord(customer_id=event.customer_id)
    when = event.time.isoformat()
    times = dict(current.field_times)

    def newer(key: str) -> bool:
        if times.get(key, "") > when:
            return False
        times[key] = when
        return True

    contact = dict(current.contact)
    for name in CONTACT_FIELDS:
        value = getattr(data, name)
        if value is not None and newer(name):
            contact[name] = value
    attributes = dict(current.attributes)
    attributes.update({k: v for k, v in data.attributes.items() if newer(f"attributes.{k}")})
    identifiers = dict(current.identifiers)
    identifiers.update({k: v for k, v in data.identifiers.items() if newer(f"identifiers.{k}")})

    registered_at = current.registered_at
    if isinstance(data, CustomerRegistered) and (
        registered_at is None or event.time < registered_at
    ):
        registered_at = event.time
    updated_at = max(filter(None, (current.updated_at, event.time)))
    return replace(
        current,
        contact=contact,
        attributes=attributes,
        identifiers=identifiers,
        field_times=times,
        registered_at=registered_at,
        updated_at=updated_at,
    )


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

    def add(self, event: Event) -> None:
        data = event.data
        if isinstance(data, OrderPlaced):
            self.orders += 1
            self.items += sum(line.quantity for line in data.lines)
            self.gross_revenue += data.total
            if self.first_purchase_at is None or event.time < self.first_purchase_at:
                self.first_purchase_at = event.time
            if self.last_purchase_at is None or event.time > self.last_purchase_at:
                self.last_purchase_at = event.time
        elif isinstance(data, OrderRefunded):
            self.refunds += 1
            self.items -= sum(line.quantity for line in data.lines)
            self.refunded += data.total


def purchase_deltas(events: Iterable[Event]) -> dict[str, PurchaseDelta]:
    """Sum a batch's orders and refunds per customer."""
    deltas: dict[str, PurchaseDelta] = {}
    for event in events:
        if isinstance(event.data, OrderPlaced | OrderRefunded):
            delta = deltas.get(event.customer_id)
            if delta is None:
                delta = deltas[event.customer_id] = PurchaseDelta()
            delta.add(event)
    return deltas
