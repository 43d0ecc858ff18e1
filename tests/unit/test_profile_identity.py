"""Merged customers: who is one person follows the newest statement about each record, in any
order; cycles are refused; placeholders cannot be merged; a person's record combines its
records field by field."""

from __future__ import annotations

import itertools

import pytest

from crm_shared.contracts.events import Event, InvalidEvent
from profile_service.identity import (
    combined_record,
    identified_by,
    members_of,
    merge_statements,
    persons_changed,
    root_of,
    standing_links,
)
from profile_service.projection import evolve_customers
from tests.unit.events_factory import at, event


def _merge(into: str, other: str, minutes: float) -> Event:
    return event("crm.customer.merged.v1", into, {"merged_customer_id": other}, minutes=minutes)


def _unmerge(into: str, other: str, minutes: float) -> Event:
    return event("crm.customer.unmerged.v1", into, {"customer_id": other}, minutes=minutes)


def test_a_merge_then_an_unmerge_gives_the_record_back_in_any_order() -> None:
    events = [_merge("A", "B", 1), _merge("A", "C", 2), _unmerge("A", "B", 3)]
    for order in itertools.permutations(events):
        links = standing_links(merge_statements(order))
        assert links == {"C": "A"}
        assert (root_of(links, "B"), members_of(links, "A")) == ("B", ["A", "C"])


def test_chains_are_followed_and_a_merge_closing_a_cycle_is_ignored() -> None:
    statements = merge_statements([_merge("B", "A", 1), _merge("C", "B", 2), _merge("A", "C", 3)])
    links = standing_links(reversed(statements))
    assert links == {"A": "B", "B": "C"}  # the newest, A absorbing C, would close a loop
    assert {root_of(links, c) for c in "ABC"} == {"C"}
    assert members_of(links, "C") == ["C", "A", "B"]


def test_a_record_merged_into_itself_says_nothing() -> None:
    assert merge_statements([_merge("A", "A", 1)]) == []


@pytest.mark.parametrize("placeholder", ["null", "NULL", "0", "undefined", "anonymous"])
def test_placeholder_ids_cannot_be_merged(placeholder: str) -> None:
    with pytest.raises(InvalidEvent, match="placeholder"):
        _merge("A", placeholder, 1)
    with pytest.raises(InvalidEvent, match=r"subject.*placeholder"):  # nor be merged into
        _merge(placeholder, "A", 1)


def test_the_person_takes_each_field_from_the_record_that_set_it_last() -> None:
    records = evolve_customers(
        {},
        [
            event("crm.customer.registered.v1", "A", {"name": "Ann", "email": "a@x"}, minutes=1),
            event("crm.customer.registered.v1", "B", {"name": "Anne B", "phone": "+1"}, minutes=5),
            event("crm.customer.updated.v1", "A", {"email": "ann@x"}, minutes=9),
            event("crm.customer.updated.v1", "B", {"identifiers": {"pos": "7"}}, minutes=2),
        ],
    )
    person = combined_record("A", [records["A"], records["B"]])
    assert person.customer_id == "A"
    assert person.contact == {"name": "Anne B", "email": "ann@x", "phone": "+1"}
    assert person.identifiers == {"pos": "7"}
    assert (person.registered_at, person.updated_at) == (at(1), at(9))
    assert identified_by(records["B"]) == ["phone", "pos id"]
    assert identified_by(evolve_customers({}, [event(
        "crm.customer.registered.v1", "G", {"name": "Guest"})])["G"]) == []  # fmt: skip


def test_the_person_keeps_the_provenance_of_each_field_it_shows() -> None:
    records = evolve_customers(
        {},
        [
            event("crm.customer.registered.v1", "A", {"email": "a@x"}, minutes=1, source="shop"),
            event("crm.customer.registered.v1", "B", {"email": "b@x"}, minutes=4, source="pos"),
            event("crm.customer.updated.v1", "A", {"country": "UK"}, minutes=6, source="crm-ui"),
        ],
    )
    person = combined_record("A", [records["A"], records["B"]])
    assert person.contact == {"email": "b@x", "country": "UK"}
    assert person.field_sources == {"email": "pos", "country": "crm-ui"}
    assert person.field_times == {"email": at(4).isoformat(), "country": at(6).isoformat()}


def test_persons_changed_names_each_moved_record_with_its_persons_before_and_after() -> None:
    before = {"ann": "ann", "visitor": "ann", "bob": "bob", "email:b": "bob"}
    after = {"ann": "ann", "visitor": "ann", "cat": "cat", "email:b": "cat"}
    # bob lost his alias to cat; ann's person did not change.
    assert persons_changed(before, after) == {"email:b", "bob", "cat"}
    assert persons_changed(before, before) == set()
    # An unmerge: the visitor is a person of its own again, Ann loses a record.
    assert persons_changed({"ann": "ann", "visitor": "ann"}, {}) == {"visitor", "ann"}
