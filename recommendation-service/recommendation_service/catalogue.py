"""The product catalogue as the service keeps it, and the filters answers are narrowed by.

Pure: no I/O. A product's record is its latest `crm.product.catalogued.v1` by (event time,
source, id), the order the store's SQL guard applies, ties included; its first listing is the
earliest of all its records (`listed_at`, or the event's time), so both are the same whatever
order events arrive in. A catalogued product is goods when its kind says so, whatever its code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from crm_shared.contracts.events import Event, ProductCatalogued, ProductKind

DEFAULT_PRICE_CURRENCY = "GBP"
"""The currency price bounds are read in when a request names none (orders' default)."""


@dataclass(frozen=True, slots=True)
class CatalogueRecord:
    """A product's catalogue record as stored, with the last-writer-wins order of the event."""

    product_id: str
    name: str
    description: str | None
    category: str | None
    price: Decimal
    currency: str
    available: bool
    kind: str
    first_listed_at: datetime
    recorded_at: datetime
    source: str
    event_id: str

    @property
    def order(self) -> tuple[datetime, str, str]:
        """The last-writer-wins order; the store's SQL guard compares the same tuple."""
        return (self.recorded_at, self.source, self.event_id)

    @property
    def goods(self) -> bool:
        return self.kind == ProductKind.GOODS.value


def record_of(event: Event) -> CatalogueRecord | None:
    """The catalogue record an event carries, if it carries one."""
    data = event.data
    if not isinstance(data, ProductCatalogued):
        return None
    return CatalogueRecord(
        product_id=data.product_id,
        name=data.name,
        description=data.description,
        category=data.category,
        price=data.price,
        currency=data.currency,
        available=data.available,
        kind=data.kind.value,
        first_listed_at=min(data.listed_at or event.time, event.time),
        recorded_at=event.time,
        source=event.source,
        event_id=event.id,
    )


def latest_records(events: Iterable[Event]) -> dict[str, CatalogueRecord]:
    """The batch's latest record per product, its first listing the earliest in the batch."""
    latest: dict[str, CatalogueRecord] = {}
    for event in events:
        found = record_of(event)
        if found is None:
            continue
        before = latest.get(found.product_id)
        if before is None:
            latest[found.product_id] = found
            continue
        winner = found if found.order > before.order else before
        first = min(found.first_listed_at, before.first_listed_at)
        latest[found.product_id] = replace(winner, first_listed_at=first)
    return latest


class InvalidFilter(ValueError):
    """A filter that can match nothing by construction (the API answers 422 with the message)."""


@dataclass(frozen=True, slots=True)
class CatalogueFilter:
    """What an answer is narrowed to. Any condition excludes products the catalogue does not
    know: nothing says what their category, price or availability is."""

    category: str | None = None
    min_price: Decimal | None = None
    max_price: Decimal | None = None
    currency: str | None = None
    available: bool | None = None

    def __post_init__(self) -> None:
        if (
            self.min_price is not None
            and self.max_price is not None
            and self.min_price > self.max_price
        ):
            raise InvalidFilter(
                f"min_price {self.min_price} is above max_price {self.max_price}: no price fits"
            )

    @property
    def active(self) -> bool:
        return any(
            value is not None
            for value in (
                self.category,
                self.min_price,
                self.max_price,
                self.currency,
                self.available,
            )
        )

    @property
    def price_currency(self) -> str | None:
        """The currency products must be priced in: the one named, else the default currency
        when a price bound is given (a price means nothing without its currency)."""
        if self.currency is not None:
            return self.currency
        bounded = self.min_price is not None or self.max_price is not None
        return DEFAULT_PRICE_CURRENCY if bounded else None

    def matches(self, record: CatalogueRecord | None) -> bool:
        """Whether a product with this record (None: not catalogued) passes: the rule the
        store's SQL applies."""
        if not self.active:
            return True
        if record is None:
            return False
        currency = self.price_currency
        return (
            (self.category is None or record.category == self.category)
            and (self.min_price is None or record.price >= self.min_price)
            and (self.max_price is None or record.price <= self.max_price)
            and (currency is None or record.currency == currency)
            and (self.available is None or record.available == self.available)
        )


def topped_up(
    picks: Sequence[Mapping[str, Any]],
    popular: Sequence[Mapping[str, Any]],
    limit: int,
    excluded: Iterable[str] = (),
) -> list[Mapping[str, Any]]:
    """The filtered picks, best first, then popular goods matching the same filter that are
    neither among them nor `excluded`, until `limit`: each keeps its own reason."""
    seen = {pick["product_id"] for pick in picks} | set(excluded)
    found = list(picks[:limit])
    for document in popular:
        if len(found) >= limit:
            break
        if document["product_id"] not in seen:
            seen.add(document["product_id"])
            found.append(document)
    return found
