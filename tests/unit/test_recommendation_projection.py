"""Recommendation projection: first purchases, product stats, what is goods, what to refresh."""

from __future__ import annotations

import pytest

from crm_shared.contracts.events import Event
from recommendation_service.projection import (
    CustomerProductDelta,
    ViewDelta,
    buyer_changes,
    cancellations,
    counted,
    customer_product_deltas,
    is_goods,
    neighbours_to_refresh,
    not_cancelled,
    order_entries,
    orders_named,
    product_deltas,
    purchases,
    refunds,
    returned_units,
    taken_back,
    units_kept_deltas,
    view_deltas,
)
from recommendation_service.trending import trend_deltas
from tests.unit.events_factory import at, event, order, refund


def _line(product: str, quantity: int = 1, description: str | None = None) -> dict[str, object]:
    line: dict[str, object] = {"product_id": product, "quantity": quantity, "unit_price": "1"}
    if description is not None:
        line["description"] = description
    return line


def _order(customer: str, *lines: dict[str, object], minutes: float = 0):
    data = {"order_id": f"O-{customer}-{minutes}", "lines": list(lines)}
    return event("crm.order.placed.v1", customer, data, minutes=minutes)


def _view(customer: str, product: str, minutes: float = 0):
    return event("crm.product.viewed.v1", customer, {"product_id": product}, minutes=minutes)


# --- purchases ---------------------------------------------------------------------------------


def test_purchases_merge_lines_of_the_same_product_within_an_order() -> None:
    found = purchases(
        [_order("C1", _line("P1", 2, "Mug"), _line("P2", 1), _line("P1", 3, "Red mug"))]
    )
    assert [(p.product_id, p.quantity, p.description) for p in found] == [
        ("P1", 5, "Red mug"),
        ("P2", 1, None),
    ]


def test_purchases_are_in_event_time_order_and_ignore_refunds_and_views() -> None:
    found = purchases(
        [
            order("C1", "O2", ("P2", 1, "1"), minutes=20),
            refund("C1", "R1", ("P1", 1, "1"), minutes=30),
            _view("C1", "P9", minutes=1),
            order("C2", "O1", ("P1", 1, "1"), minutes=10),
        ]
    )
    assert [(p.customer_id, p.product_id, p.time) for p in found] == [
        ("C2", "P1", at(10)),
        ("C1", "P2", at(20)),
    ]


def test_a_line_without_description_keeps_the_one_of_an_earlier_line() -> None:
    (found,) = purchases([_order("C1", _line("P1", 1, "Mug"), _line("P1", 1))])
    assert found.description == "Mug"


# --- units kept and buyers: refunds are negative signals ----------------------------------------


def test_units_kept_add_orders_and_take_refunds() -> None:
    events = [
        _order("C1", _line("P1", 3), _line("P2", 1), minutes=0),
        refund("C1", "R1", ("P1", 2, "1"), minutes=5),
        refund("C2", "R2", ("P3", 1, "1"), minutes=6),  # folded before its order
    ]
    deltas = units_kept_deltas(purchases(events), returned_units(refunds(events)))
    assert deltas == {("C1", "P1"): 1, ("C1", "P2"): 1, ("C2", "P3"): -1}


def test_a_customer_is_a_buyer_while_they_keep_some_of_the_product() -> None:
    changes = buyer_changes(
        kept_before={("C1", "P1"): 2, ("C1", "P2"): 1, ("C2", "P1"): -1},
        deltas={
            ("C1", "P1"): -2,  # returned all: no longer a buyer
            ("C1", "P2"): 5,  # bought again: already a buyer
            ("C2", "P1"): 1,  # its order after its refund: still nothing kept
            ("C3", "P1"): 1,  # new buyer
            ("C4", "P1"): -1,  # a refund first: not a buyer yet
        },
    )
    assert changes == {("C1", "P1"): -1, ("C3", "P1"): 1}


def test_buyers_are_the_same_whatever_the_order_of_an_order_and_its_refund() -> None:
    order_first = buyer_changes({}, {("C1", "P1"): 2})
    then_refund = buyer_changes({("C1", "P1"): 2}, {("C1", "P1"): -2})
    refund_first = buyer_changes({}, {("C1", "P1"): -2})
    then_order = buyer_changes({("C1", "P1"): -2}, {("C1", "P1"): 2})
    assert sum(order_first.values()) + sum(then_refund.values()) == 0
    assert sum(refund_first.values()) + sum(then_order.values()) == 0


# --- goods and marks for the neighbour job -----------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "POST",
        "DOT",
        "C2",
        "M",
        "m",
        "D",
        "S",
        "B",
        "PADS",
        "CRUK",
        "AMAZONFEE",
        "BANK CHARGES",
        "gift_0001_20",
        "gift_0001_50",
        " POST ",
    ],
)
def test_postage_fees_adjustments_and_vouchers_are_not_goods(code: str) -> None:
    assert not is_goods(code)


@pytest.mark.parametrize("code", ["85123A", "22423", "DCGSSGIRL", "POSTER-1", "MUG", "bp17"])
def test_stock_codes_and_other_product_ids_are_goods(code: str) -> None:
    assert is_goods(code)


def test_only_goods_that_gained_or_lost_a_buyer_are_marked_once_each_sorted() -> None:
    batch = purchases(
        [
            _order("C1", _line("P2"), _line("POST"), _line("P1"), minutes=0),
            _order("C2", _line("P2"), _line("gift_0001_10"), minutes=1),
            _order("C1", _line("P3"), minutes=2),
        ]
    )
    changes = buyer_changes({("C1", "P3"): 1}, units_kept_deltas(batch, {}))
    assert neighbours_to_refresh(changes) == ["P1", "P2"]
    assert neighbours_to_refresh({("C1", "P4"): -1, ("C1", "POST"): -1}) == ["P4"]


# --- customer products, views and product statistics -------------------------------------------


def test_customer_product_deltas_count_orders_and_keep_first_and_last_time() -> None:
    batch = purchases(
        [
            _order("C1", _line("P1", 2), minutes=30),
            _order("C1", _line("P1", 1), _line("P1", 1), minutes=10),
            _order("C2", _line("P1", 1), minutes=20),
        ]
    )
    deltas = customer_product_deltas(batch, {("C1", "P1"): 4, ("C2", "P1"): 1, ("C3", "P1"): -1})
    c1 = deltas["C1", "P1"]
    assert (c1.times_bought, c1.first_bought_at, c1.last_bought_at) == (2, at(10), at(30))
    assert c1.units_kept == 4
    assert deltas["C2", "P1"].times_bought == 1
    refunded_only = deltas["C3", "P1"]
    assert (refunded_only.times_bought, refunded_only.last_bought_at) == (0, None)
    assert refunded_only.units_kept == -1


def test_view_deltas_count_views_and_keep_the_latest_time_whatever_the_arrival_order() -> None:
    deltas = view_deltas(
        [_view("C1", "P1", minutes=50), _view("C1", "P1", minutes=5), _view("C2", "P1")]
    )
    assert deltas["C1", "P1"] == ViewDelta(2, at(50))
    assert deltas["C2", "P1"] == ViewDelta(1, at(0))
    assert view_deltas([order("C1", "O1", ("P1", 1, "1"))]) == {}


def test_product_deltas_sum_orders_quantity_buyer_changes_and_views() -> None:
    batch = purchases(
        [
            _order("C1", _line("P1", 2), _line("P2", 1), minutes=1),
            _order("C1", _line("P1", 3), minutes=2),
            _order("C2", _line("P1", 1), minutes=3),
        ]
    )
    changes = buyer_changes({("C2", "P1"): 1}, units_kept_deltas(batch, {}))
    changes["C4", "P2"] = -1  # a refund took a buyer away
    views = {("C3", "P1"): ViewDelta(4, at(0)), ("C3", "P9"): ViewDelta(1, at(0))}
    deltas = product_deltas(batch, changes, views)
    p1 = deltas["P1"]
    assert (p1.orders, p1.quantity, p1.buyers, p1.views, p1.goods) == (3, 6, 1, 4, True)
    assert (deltas["P2"].orders, deltas["P2"].buyers) == (1, 0)
    assert (deltas["P9"].orders, deltas["P9"].views, deltas["P9"].description) == (0, 1, None)


def test_the_description_is_the_newest_by_event_time_not_by_arrival() -> None:
    batch = purchases(
        [
            _order("C1", _line("P1", 1, "New name"), minutes=20),
            _order("C2", _line("P1", 1, "Old name"), minutes=5),
            _order("C3", _line("P1", 1), minutes=30),
        ]
    )
    p1 = product_deltas(batch, {}, {})["P1"]
    assert (p1.description, p1.described_at) == ("New name", at(20))


def test_product_deltas_say_which_products_are_not_goods() -> None:
    batch = purchases([_order("C1", _line("P1"), _line("POST"), _line("gift_0001_20"))])
    deltas = product_deltas(batch, buyer_changes({}, units_kept_deltas(batch, {})), {})
    assert {p: d.goods for p, d in deltas.items()} == {
        "P1": True,
        "POST": False,
        "gift_0001_20": False,
    }
    assert deltas["POST"].buyers == 1  # still counted: distinct buyers stay true to the orders


def test_a_product_is_first_sold_at_its_earliest_purchase_by_event_time_not_by_arrival() -> None:
    batch = purchases(
        [
            _order("C1", _line("P1"), minutes=20),
            _order("C2", _line("P1"), _line("P2"), minutes=5),
            _order("C3", _line("P1"), minutes=30),
        ]
    )
    deltas = product_deltas(batch, {}, {("C4", "P9"): ViewDelta(1, at(1))})
    assert (deltas["P1"].first_sold_at, deltas["P2"].first_sold_at) == (at(5), at(5))
    assert deltas["P9"].first_sold_at is None  # viewed, never sold


# --- cancelled orders count as not bought -------------------------------------------------------


def _cancelled(customer: str, order_id: str, minutes: float) -> Event:
    return event("crm.order.cancelled.v1", customer, {"order_id": order_id}, minutes=minutes)


def _refund_of(order_id: str, refund_id: str, product: str, units: int, minutes: float) -> Event:
    return event(
        "crm.order.refunded.v1",
        "C1",
        {
            "refund_id": refund_id,
            "order_id": order_id,
            "lines": [{"product_id": product, "quantity": units, "unit_price": "1"}],
            "country": "GB",
        },
        minutes=minutes,
    )


def test_cancellations_and_the_orders_purchases_and_refunds_name() -> None:
    events = [
        order("C1", "O1", ("P1", 2, "1"), minutes=0),
        _refund_of("O1", "R1", "P1", 1, minutes=5),
        refund("C1", "R2", ("P2", 1, "1"), minutes=6),  # names no order
        _cancelled("C1", "O1", minutes=9),
    ]
    assert cancellations(events) == {("C1", "O1")}
    assert orders_named([*purchases(events), *refunds(events)]) == {("C1", "O1")}
    assert [p.sign for p in counted(purchases(events), {("C1", "O1")})] == [0]
    assert [r.product_id for r in not_cancelled(refunds(events), {("C1", "O1")})] == ["P2"]


def test_an_order_cancelled_before_it_is_folded_only_dates_its_pairs() -> None:
    batch = counted(purchases([order("C1", "O1", ("P1", 2, "1"), minutes=3)]), {("C1", "O1")})
    units = units_kept_deltas(batch, {})
    assert units == {("C1", "P1"): 0}
    assert customer_product_deltas(batch, units) == {
        ("C1", "P1"): CustomerProductDelta(0, at(3), at(3), 0)
    }
    (product,) = product_deltas(batch, {}, {}).values()
    assert (product.orders, product.quantity, product.first_sold_at) == (0, 0, at(3))


def test_taking_back_an_order_and_its_refund_undoes_what_they_counted() -> None:
    """Folded as they come, then taken back from their entries: the counts add up to zero, the
    segments they counted in come from the entries, not from the customer's segments now."""
    events = [
        order("C1", "O1", ("P1", 2, "1"), ("P2", 1, "1"), minutes=0),
        _refund_of("O1", "R1", "P1", 1, minutes=5),
    ]
    placed, returned = purchases(events), refunds(events)
    entries = order_entries(placed, returned, {"C1": ["vip"]})
    assert [(e.refund, e.segments, e.lines) for e in entries] == [
        (False, ["vip"], [("P1", 2), ("P2", 1)]),
        (True, ["vip"], [("P1", 1)]),
    ]
    taken_orders, taken_refunds = taken_back(entries)
    both = [*placed, *taken_orders]
    units = units_kept_deltas(both, returned_units([*returned, *taken_refunds]))
    assert units == {("C1", "P1"): 0, ("C1", "P2"): 0}
    assert {d.times_bought for d in customer_product_deltas(both, units).values()} == {0}
    assert {(d.orders, d.quantity) for d in product_deltas(both, {}, {}).values()} == {(0, 0)}
    folded = trend_deltas(placed, returned, {"C1": ["vip"]}, 7.0)
    undone = trend_deltas(taken_orders, taken_refunds, {"C1": ["left vip"]}, 7.0)
    assert (
        set(undone)
        == set(folded)
        == {(scope, product) for scope in ("", "segment:vip") for product in ("P1", "P2")}
        | {("country:GB", "P1")}
    )
    assert {
        (folded[key].score + undone[key].score, folded[key].purchases + undone[key].purchases)
        for key in folded
    } == {(0, 0)}
