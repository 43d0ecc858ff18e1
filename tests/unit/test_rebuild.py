"""The pure parts of `crm rebuild`: which tables differ, and how progress reads."""

from __future__ import annotations

from dataclasses import replace

import pytest

from crm_shared.contracts.events import CLOCK_TICKED, Event
from crm_shared.ops.rebuild import Difference, compare, format_duration, format_progress
from crm_shared.runtime.bulk import in_tick_rounds
from crm_shared.runtime.projector import runs_between_ticks
from crm_shared.runtime.shadow import Fingerprint, quoted
from tests.unit.events_factory import event, order

COLUMNS = ("customer_id", "orders")


def prints(**tables: tuple[int, str]) -> dict[str, Fingerprint]:
    return {name: Fingerprint(rows, checksum, COLUMNS) for name, (rows, checksum) in tables.items()}


def test_equal_tables_leave_nothing_to_report() -> None:
    live = prints(customers=(10, "123"), purchase_totals=(4, "77"))
    assert compare(live, dict(live), missing_applied=0) == []


def test_a_changed_checksum_names_the_table_and_both_sums() -> None:
    live = prints(customers=(10, "123"), purchase_totals=(4, "77"))
    rebuilt = prints(customers=(10, "123"), purchase_totals=(4, "78"))
    assert compare(live, rebuilt, 0) == [
        Difference("purchase_totals", "checksums differ over 4 rows: live 77, rebuilt 78")
    ]


def test_different_row_counts_are_reported_before_checksums() -> None:
    found = compare(prints(customers=(10, "1")), prints(customers=(9, "2")), 0)
    assert [str(d) for d in found] == ["customers: rows differ: live 10, rebuilt 9"]


def test_tables_on_one_side_only_and_other_columns_are_differences() -> None:
    live = prints(customers=(1, "1"), old_table=(1, "1"))
    rebuilt = prints(customers=(1, "1"), new_table=(0, "0"))
    rebuilt["customers"] = Fingerprint(1, "1", (*COLUMNS, "country"))
    found = {d.table: d.detail for d in compare(live, rebuilt, 0)}
    assert found == {
        "customers": "columns differ: live (customer_id, orders), rebuilt (customer_id, orders, "
        "country)",
        "new_table": "only in the shadow",
        "old_table": "only in the live schema",
    }


def test_ids_the_live_side_applied_but_the_rebuild_did_not_are_a_difference() -> None:
    found = compare(prints(), prints(), missing_applied=3)
    assert found == [
        Difference(
            "applied_events", "3 event ids the live projection applied are not in the rebuild"
        )
    ]


def test_progress_shows_the_bar_counts_rate_and_time_left() -> None:
    line = format_progress(25_000, 100_000, 0.5, width=20)
    assert line == "[#####...............] 25,000/100,000 records  25.0%  50,000/s  ETA 0:02"


def test_progress_before_any_record_and_when_done() -> None:
    assert format_progress(0, 10, 0.0, width=4).endswith("0/10 records   0.0%  0/s  ETA --:--")
    assert format_progress(10, 10, 2.0, width=4) == "[####] 10/10 records 100.0%  5/s  ETA 0:00"
    assert format_progress(0, 0, 1.0, width=2) == "[##] 0/0 records 100.0%  0/s  ETA 0:00"


def test_durations_read_as_minutes_or_hours() -> None:
    assert format_duration(59.6) == "1:00"
    assert format_duration(3_725) == "1:02:05"


def test_a_plain_identifier_is_quoted() -> None:
    assert quoted("rebuild_shadow") == '"rebuild_shadow"'


@pytest.mark.parametrize("name", ['public"; DROP', "Public", "", "a b"])
def test_anything_but_a_plain_identifier_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a plain identifier"):
        quoted(name)


def _on(partition: int, item: Event) -> Event:
    return replace(item, partition=partition)


def _tick(partition: int, minutes: float, topic: str = "crm.orders") -> Event:
    data = {"topic": topic, "partition": partition}
    return _on(partition, event(CLOCK_TICKED, "clock", data, minutes=minutes, source="crm-clock"))


def test_ticks_of_every_partition_fall_into_one_run_and_each_partition_keeps_its_order() -> None:
    a1, a2 = _on(0, order("a", "o1", ("p", 1, "1.00"))), _on(0, order("a", "o2", ("p", 1, "1.00")))
    b1, b2 = _on(1, order("b", "o3", ("p", 1, "1.00"))), _on(1, order("b", "o4", ("p", 1, "1.00")))
    ta, tb = _tick(0, 1), _tick(1, 1)
    read_partition_by_partition = [a1, ta, a2, b1, tb, b2]
    arranged = in_tick_rounds(read_partition_by_partition)
    assert arranged == [a1, b1, ta, tb, a2, b2]
    assert len(runs_between_ticks(arranged)) == 3
    assert len(runs_between_ticks(read_partition_by_partition)) == 5


def test_a_tick_of_one_topic_does_not_move_the_events_of_another() -> None:
    customer = _on(0, event("crm.customer.registered.v1", "a", {"name": "A"}))
    purchase = _on(0, order("a", "o1", ("p", 1, "1.00")))
    orders_tick = _tick(0, 1, topic="crm.orders")
    arranged = in_tick_rounds([orders_tick, purchase, customer])
    assert arranged == [customer, orders_tick, purchase]
