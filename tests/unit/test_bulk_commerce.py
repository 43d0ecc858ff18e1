"""A rebuild's commerce rows: those naming an id no earlier batch wrote are appended (COPY), the
others go through the first-wins upsert; either way the same rows as the live fold's."""

from __future__ import annotations

from crm_shared.contracts.events import Event
from profile_service.commerce import WrittenIds, commerce_rows, split_new
from tests.unit.events_factory import event, order, refund


def _cancel(customer: str, order_id: str) -> Event:
    return event("crm.order.cancelled.v1", customer, {"order_id": order_id})


def test_rows_of_new_ids_are_appended_with_all_the_lines_of_their_order() -> None:
    written = WrittenIds()
    batch = [
        order("C1", "O1", ("P1", 1, "1"), ("P2", 2, "2")),
        refund("C1", "R1", ("P1", 1, "1")),
        _cancel("C2", "O7"),
    ]
    new, known = split_new(commerce_rows(batch), written)
    assert [r.order_id for r in new.orders] == ["O1"]
    assert [r.line_no for r in new.lines] == [1, 2]  # one order's lines share one key
    assert [r.refund_id for r in new.refunds] == ["R1"]
    assert [r.order_id for r in new.cancellations] == ["O7"]
    assert (known.orders, known.lines, known.refunds, known.cancellations) == ([], [], [], [])


def test_an_id_written_by_an_earlier_batch_goes_to_the_upsert() -> None:
    written = WrittenIds()
    split_new(commerce_rows([order("C1", "O1", ("P1", 1, "1")), _cancel("C1", "O1")]), written)
    again = order("C1", "O1", ("P9", 1, "9"), minutes=-5)  # earlier: the upsert may keep it
    new, known = split_new(commerce_rows([again, _cancel("C1", "O1")]), written)
    assert (new.orders, new.cancellations) == ([], [])
    assert [r.event_id for r in known.orders] == [again.id]
    assert len(known.cancellations) == 1
    # Its lines belong to another event: a new key, appended beside the first placement's.
    assert [(r.event_id, r.product_id) for r in new.lines] == [(again.id, "P9")]
    assert known.lines == []


def test_the_same_order_id_of_another_customer_is_another_row() -> None:
    written = WrittenIds()
    split_new(commerce_rows([order("C1", "O1", ("P1", 1, "1"))]), written)
    new, known = split_new(commerce_rows([order("C2", "O1", ("P1", 1, "1"))]), written)
    assert [r.customer_id for r in new.orders] == ["C2"]
    assert known.orders == []
