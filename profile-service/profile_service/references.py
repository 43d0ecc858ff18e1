"""Identifier references: an event may name a customer by an identifier instead of its id.

A subject `<kind>:<value>` (a lower-case kind, then a colon) names whoever holds that
identifier: `email:ann@example.com`, `phone:+4420700000`, `loyalty:L-1` (any system of the
record's `identifiers`). The profile keeps such events under the reference as a record of its
own, an alias, and counts it in the person of the customer holding the identifier, derived
when read like a merge (docs/decisions.md, "Events naming a customer by an identifier"). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

CONTACT_IDENTIFIERS = ("email", "phone")
"""Contact fields that identify a customer, as identifier kinds of the same name."""

_REFERENCE = re.compile(r"([a-z][a-z0-9_-]{0,39}):(.+)")
_PHONE_PUNCTUATION = str.maketrans("", "", " -().")


@dataclass(frozen=True, slots=True)
class IdentifierReference:
    """A subject naming a customer by an identifier: the kind (system) and the value, compared
    as `normalised_identifier` compares them."""

    system: str
    value: str


def normalised_identifier(system: str, value: str) -> str:
    """How values of an identifier are compared: e-mail addresses without case, phone numbers
    without spacing and punctuation, every other identifier as given (trimmed)."""
    value = value.strip()
    if system == "email":
        return value.casefold()
    if system == "phone":
        return value.translate(_PHONE_PUNCTUATION)
    return value


def identifier_reference(subject: str) -> IdentifierReference | None:
    """The identifier a subject names, or None when the subject is a customer id (customer ids
    never start with a lower-case word and a colon: that form is reserved for references)."""
    found = _REFERENCE.fullmatch(subject)
    if found is None:
        return None
    system, value = found.groups()
    return IdentifierReference(system, normalised_identifier(system, value))


def aliases(subjects: Iterable[str]) -> dict[str, IdentifierReference]:
    """The subjects among these that name a customer by an identifier, with what they name."""
    found = {}
    for subject in subjects:
        if ":" in subject and (reference := identifier_reference(subject)) is not None:
            found[subject] = reference
    return found
