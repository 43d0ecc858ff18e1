"""Events naming a customer by an identifier: which subjects are references, how identifier
values compare, and which person an alias record counts for (with merges, in any order)."""

from __future__ import annotations

import itertools

import pytest

from crm_shared.contracts.events import Event
from profile_service.identity import (
    merge_statements,
    person_of,
    person_records,
    persons,
    standing_links,
)
from profile_service.projection import evolve_customers, identifier_claims
from profile_service.references import (
    IdentifierReference,
    aliases,
    identifier_reference,
    normalised_identifier,
)
from tests.unit.events_factory import event


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("email:Ann@Example.COM", IdentifierReference("email", "ann@example.com")),
        ("phone:+44-20-7000", IdentifierReference("phone", "+44207000")),
        ("loyalty:L-1", IdentifierReference("loyalty", "L-1")),
        ("pos_id:7:8", IdentifierReference("pos_id", "7:8")),
        ("C-1001", None),
        ("12345", None),
        ("Email:ann@x.test", None),  # a kind is lower case: this is a customer id
        ("email:", None),
    ],
)
def test_a_subject_is_a_reference_when_a_lower_case_kind_and_a_colon_lead(
    subject: str, expected: IdentifierReference | None
) -> None:
    assert identifier_reference(subject) == expected


def test_only_references_among_subjects_are_aliases() -> None:
    found = aliases(["C-1", "email:a@x.test", "clock"])
    assert found == {"email:a@x.test": IdentifierReference("email", "a@x.test")}


def test_e_mail_and_phone_claims_are_normalised_like_references() -> None:
    record = evolve_customers(
        {},
        [
            event(
                "crm.customer.registered.v1",
                "C-1",
                {"email": " Ann@X.Test", "phone": "+44 (20) 7000", "identifiers": {"pos": "7"}},
            )
        ],
    )["C-1"]
    claims = {(c.system, c.value) for c in identifier_claims(record)}
    assert claims == {("email", "ann@x.test"), ("phone", "+44207000"), ("pos", "7")}
    assert normalised_identifier("pos", " 7 ") == "7"


def _merge(into: str, other: str, minutes: float) -> Event:
    return event("crm.customer.merged.v1", into, {"merged_customer_id": other}, minutes=minutes)


def test_an_alias_counts_for_the_person_of_the_customer_holding_its_identifier() -> None:
    """Ann holds the e-mail an order named; the visitor is merged into Ann; an alias of an
    identifier nobody holds is a person of its own."""
    holders = {"email:ann@x.test": "visitor"}  # the visitor's claim is the newest
    for order in itertools.permutations([_merge("ann", "visitor", 1), _merge("bob", "zed", 2)]):
        links = standing_links(merge_statements(order))
        assert person_of("email:ann@x.test", links, holders) == "ann"
        assert person_of("email:nobody@x.test", links, holders) == "email:nobody@x.test"
        assert person_records("ann", links, holders) == ["ann", "email:ann@x.test", "visitor"]
        assert persons(links, holders) == {
            "ann": "ann",
            "visitor": "ann",
            "email:ann@x.test": "ann",
            "bob": "bob",
            "zed": "bob",
        }


def test_aliases_holding_each_other_stop_where_the_chain_closes() -> None:
    holders = {"email:a@x": "loyalty:1", "loyalty:1": "email:a@x"}
    assert person_of("email:a@x", {}, holders) == "email:a@x"
