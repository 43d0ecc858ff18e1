"""The shared batch mechanism's pure part: what is folded, dead-lettered, ignored or skipped."""

from __future__ import annotations

import json

from crm_shared.events import build_event
from crm_shared.projector import RawRecord, sort_batch

FOLDS = frozenset({"crm.order.placed.v1"})


def _raw(
    offset: int, document: object, *, key: bytes | None = b"C1", partition: int = 0
) -> RawRecord:
    value = document if isinstance(document, bytes) else json.dumps(document).encode()
    return RawRecord("crm.orders", partition, offset, key, value)


def _order(event_id: str) -> dict[str, object]:
    return build_event(
        "crm.order.placed.v1",
        "C1",
        {"order_id": "O", "lines": [{"product_id": "P", "quantity": 1, "unit_price": "1"}]},
        source="shop",
        event_id=event_id,
    )


def test_valid_events_are_kept_in_order_and_positions_advance_past_every_record() -> None:
    batch = sort_batch(
        [_raw(5, _order("a")), _raw(6, b"garbage"), _raw(7, _order("b"))], {}, FOLDS, "profile"
    )
    assert [e.id for e in batch.events] == ["a", "b"]
    assert batch.next_offsets == {("crm.orders", 0): 8}
    [letter] = batch.dead_letters
    assert (letter.offset, letter.value, letter.consumer) == (6, b"garbage", "profile")
    assert "invalid envelope" in letter.reason


def test_records_below_the_stored_position_are_skipped_as_already_applied() -> None:
    batch = sort_batch(
        [_raw(3, _order("old")), _raw(4, _order("new"))], {("crm.orders", 0): 4}, FOLDS, "p"
    )
    assert [e.id for e in batch.events] == ["new"]
    assert batch.already_consumed == 1


def test_types_the_projection_does_not_fold_are_ignored_not_dead_lettered() -> None:
    refund = build_event(
        "crm.order.refunded.v1",
        "C1",
        {"refund_id": "R", "lines": [{"product_id": "P", "quantity": 1, "unit_price": "1"}]},
        source="shop",
    )
    batch = sort_batch([_raw(0, refund)], {}, FOLDS, "p")
    assert batch.events == [] and batch.dead_letters == []
    assert batch.ignored_types == ["crm.order.refunded.v1"]


def test_a_key_that_is_not_the_subject_is_dead_lettered() -> None:
    batch = sort_batch([_raw(0, _order("a"), key=b"someone-else")], {}, FOLDS, "p")
    assert "not the subject" in batch.dead_letters[0].reason


def test_a_record_without_value_is_dead_lettered() -> None:
    batch = sort_batch([RawRecord("crm.orders", 1, 9, b"C1", None)], {}, FOLDS, "p")
    assert batch.dead_letters[0].reason == "empty record (no value)"
    assert batch.next_offsets == {("crm.orders", 1): 10}
