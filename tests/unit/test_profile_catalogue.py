"""The profile's fold of products' categories: the latest record by (event time, source, id)
wins whatever the arrival order and the batches, and a reclassification is told apart."""

from __future__ import annotations

import itertools
from typing import Any

from crm_shared.contracts.events import Event
from profile_service.catalogue import CategoryRow, category_row, newer_rows, reclassified
from tests.unit.events_factory import event

CATALOGUED = "crm.product.catalogued.v1"


def _catalogued(product: str, minutes: float, category: str | None, **envelope: Any) -> Event:
    data: dict[str, Any] = {"product_id": product, "name": product, "price": "2.50"}
    data.update({"available": True, "category": category})
    return event(CATALOGUED, product, data, minutes=minutes, **envelope)


def _fold(stored: dict[str, CategoryRow], batch: list[Event]) -> dict[str, CategoryRow]:
    return stored | {row.product_id: row for row in newer_rows(stored, batch)}


def test_the_latest_record_wins_whatever_the_arrival_order_and_the_batches() -> None:
    records = [
        _catalogued("P1", 5, "kitchen"),
        _catalogued("P1", 9, "garden"),
        _catalogued("P1", 1, "toys"),
        _catalogued("P2", 3, None),
    ]
    kept = set()
    for order in itertools.permutations(records):
        for cut in range(len(order) + 1):  # two batches, the stored rows between them
            stored = _fold(_fold({}, list(order[:cut])), list(order[cut:]))
            kept.add(tuple(sorted((p, r.category) for p, r in stored.items())))
    assert kept == {(("P1", "garden"), ("P2", None))}


def test_a_late_older_record_writes_nothing() -> None:
    stored = _fold({}, [_catalogued("P1", 9, "garden")])
    assert newer_rows(stored, [_catalogued("P1", 5, "kitchen")]) == []
    assert (
        newer_rows(stored, [_catalogued("P1", 9, "garden", event_id=stored["P1"].event_id)]) == []
    )


def test_ties_in_time_go_to_the_greater_source_then_id() -> None:
    first = _catalogued("P1", 5, "kitchen", source="pim", event_id="b")
    same_source = _catalogued("P1", 5, "toys", source="pim", event_id="a")
    other_source = _catalogued("P1", 5, "garden", source="shop", event_id="a")
    assert _fold({}, [first, same_source])["P1"].category == "kitchen"
    assert _fold({}, [same_source, other_source, first])["P1"].category == "garden"


def test_only_a_changed_category_is_a_reclassification() -> None:
    stored = _fold({}, [_catalogued("P1", 1, "kitchen"), _catalogued("P2", 1, "toys")])
    batch = [
        _catalogued("P1", 5, "kitchen"),  # a newer record, same category (a price changed)
        _catalogued("P2", 5, "garden"),
        _catalogued("P3", 5, "garden"),  # new to the profile, with a category
        _catalogued("P4", 5, None),  # new, without one: nothing it was bought as changes
    ]
    written = newer_rows(stored, batch)
    assert {row.product_id for row in written} == {"P1", "P2", "P3", "P4"}
    assert reclassified(stored, written) == {"P2", "P3"}


def test_other_events_carry_no_category_row() -> None:
    placed = event(
        "crm.order.placed.v1",
        "C1",
        {
            "order_id": "O1",
            "lines": [{"product_id": "P1", "quantity": 1, "unit_price": "2.50"}],
        },
    )
    assert category_row(placed) is None
    assert newer_rows({}, [placed]) == []
