"""Each product's category, as the profile keeps it from crm.catalogue. Pure: no I/O.

A product's category is that of its latest `crm.product.catalogued.v1` by (event time, source,
event id), the same last-writer-wins order as the profile's other state: a late record older
than the one kept changes nothing, so the kept rows are the same whatever order the records
arrive in. Folded for the favourite categories of the purchase summary and for segment rules
over what a customer bought.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from crm_shared.contracts.events import Event, ProductCatalogued


class CategoryRow(NamedTuple):
    """One row of `product_categories`, its columns in order (category None: the catalogue
    names none). Its last three fields are the last-writer-wins order (`order_of`)."""

    product_id: str
    category: str | None
    recorded_at: datetime
    source: str
    event_id: str


def order_of(row: CategoryRow) -> tuple[Any, ...]:
    """(event time, source, event id): the store's SQL guard compares the same tuple."""
    return row[2:]


def category_row(event: Event) -> CategoryRow | None:
    """The row a catalogue record writes (None for any other event)."""
    data = event.data
    if not isinstance(data, ProductCatalogued):
        return None
    return CategoryRow(data.product_id, data.category, event.time, event.source, event.id)


def newer_rows(stored: Mapping[str, CategoryRow], events: Iterable[Event]) -> list[CategoryRow]:
    """The rows to write: each product's latest record of the batch, unless the stored row is
    as new or newer."""
    latest = dict(stored)
    for event in events:
        row = category_row(event)
        if row is None:
            continue
        kept = latest.get(row.product_id)
        if kept is None or order_of(row) > order_of(kept):
            latest[row.product_id] = row
    return [row for product, row in latest.items() if stored.get(product) is not row]


def reclassified(stored: Mapping[str, CategoryRow], written: Iterable[CategoryRow]) -> set[str]:
    """The products whose category the written rows change (a product new to the profile, when
    it has one): what their buyers bought now counts under another category."""
    return {
        row.product_id
        for row in written
        if row.category != (kept.category if (kept := stored.get(row.product_id)) else None)
    }
