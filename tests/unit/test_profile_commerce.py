"""Profile commerce: one row per order, refund and cancellation whatever the arrival order, and
the per-currency purchase summary."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from crm_shared.contracts.events import Event
from profile_service.commerce import CurrencyTotals, commerce_rows, favourites, summarise
from tests.unit.events_factory import at, event, order, refund


def _cancel(customer: str, order_id: str, minutes: float) -> Event:
    return event("crm.order.cancelled.v1", customer, {"order_id": order_id}, minutes=minutes)


def _order_in(
    currency: str, order_id: str, minutes: float, channel: str = "web", **extra: str
) -> Event:
    return event(
        "crm.order.placed.v1",
        "C1",
        {
            "order_id": order_id,
            "currency": currency,
            "channel": channel,
            "lines": [{"product_id": "P", "quantity": 2, "unit_price": "5"}],
            **extra,
        },
        minutes=minutes,
    )


def test_an_order_becomes_one_row_with_its_lines_amount_and_channel() -> None:
    rows = commerce_rows([order("C1", "O1", ("P1", 2, "2.50"), ("P2", 1, "10"), minutes=3)])
    (placed,) = rows.orders
    assert (placed.order_id, placed.amount, placed.line_count, placed.items) == (
        "O1",
        Decimal("15.00"),
        2,
        3,
    )
    assert (placed.placed_at, placed.channel, placed.currency) == (at(3), "web", "GBP")
    assert placed.country is None  # the event names none
    shipped = _order_in("GBP", "O2", 0, country="FR")
    assert [o.country for o in commerce_rows([shipped]).orders] == ["FR"]
    assert [(line.line_no, line.product_id, line.quantity) for line in rows.lines] == [
        (1, "P1", 2),
        (2, "P2", 1),
    ]


def test_an_order_id_placed_twice_keeps_the_first_placement_in_any_arrival_order() -> None:
    early = _order_in("GBP", "O1", 1, channel="store")
    late = _order_in("GBP", "O1", 9, channel="web")
    for batch in ([early, late], [late, early]):
        rows = commerce_rows(batch)
        assert [(row.event_id, row.channel) for row in rows.orders] == [(early.id, "store")]
        assert {line.event_id for line in rows.lines} == {early.id, late.id}


def test_refunds_name_their_order_and_cancellations_are_rows_of_their_own() -> None:
    named = event(
        "crm.order.refunded.v1",
        "C1",
        {
            "refund_id": "R1",
            "order_id": "O1",
            "lines": [{"product_id": "P", "quantity": 1, "unit_price": "5"}],
        },
        minutes=4,
    )
    rows = commerce_rows(
        [named, refund("C1", "R2", ("P", 1, "2"), minutes=5), _cancel("C1", "O2", 6)]
    )
    assert [(r.refund_id, r.order_id, r.amount) for r in rows.refunds] == [
        ("R1", "O1", Decimal("5")),
        ("R2", None, Decimal("2")),
    ]
    assert [(c.order_id, c.cancelled_at) for c in rows.cancellations] == [("O2", at(6))]
    assert rows.orders == []


def test_summary_averages_over_orders_gaps_and_calendar_years() -> None:
    first = at(0)
    totals = CurrencyTotals(
        currency="GBP",
        orders=3,
        gross_revenue=Decimal("130"),
        refunded=Decimal("10"),
        net_revenue=Decimal("120"),
        first_purchase_at=first,
        last_purchase_at=first + timedelta(days=400),
    )
    summary = summarise(totals)
    assert summary.average_order_value == Decimal("40.00")
    assert summary.mean_days_between_purchases == Decimal("200.00")
    years = (first + timedelta(days=400)).year - first.year + 1
    assert summary.average_yearly_purchase == round(Decimal(120) / years, 2)


def test_one_order_has_no_gap_and_no_order_has_no_average() -> None:
    one = summarise(CurrencyTotals("EUR", 1, Decimal(5), Decimal(0), Decimal(5), at(0), at(0)))
    assert one.mean_days_between_purchases is None
    assert one.average_yearly_purchase == Decimal("5.00")
    refunds_only = summarise(
        CurrencyTotals("EUR", 0, Decimal(0), Decimal(3), Decimal(-3), None, None)
    )
    assert refunds_only.average_order_value is None
    assert refunds_only.average_yearly_purchase is None


def test_favourites_rank_by_count_then_name() -> None:
    assert favourites({"web": 3, "store": 5, "phone": 3, "mail": 1}) == ["store", "phone", "web"]
