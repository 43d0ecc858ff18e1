"""Merged customers: which records are one person, decided from merge statements. Pure: no I/O.

Like PostHog's person overrides, a merge never rewrites events or records: each statement
("record X is part of Y", "X is apart again") is kept, and who is one person is derived from
them when read. So an unmerge gives a record its own history back, and the statements fold the
same in any order:
- about each record, its newest statement decides (by event time, then event id);
- the standing merges are applied oldest first, and one that would close a cycle (Y already
  belongs to X) is ignored;
- a person is named by its root record, the one merged into nothing; chains are followed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from crm_shared.contracts.events import CustomerMerged, CustomerUnmerged, Event
from profile_service.projection import CONTACT_FIELDS, CustomerRecord, wins


@dataclass(frozen=True, slots=True)
class MergeStatement:
    customer_id: str
    """The record kept: the statement's subject."""
    other_id: str
    """The record merged into it, or split off from it again."""
    merged: bool
    reason: str | None
    source: str
    event_id: str
    at: datetime

    @property
    def rank(self) -> tuple[datetime, str]:
        return (self.at, self.event_id)


def merge_statements(events: Iterable[Event]) -> list[MergeStatement]:
    """The statements of a batch's merges and unmerges; a record merged into itself says
    nothing and is skipped."""
    found = []
    for event in events:
        data = event.data
        if type(data) is CustomerMerged:
            other, merged = data.merged_customer_id, True
        elif type(data) is CustomerUnmerged:
            other, merged = data.customer_id, False
        else:
            continue
        if other != event.customer_id:
            found.append(
                MergeStatement(
                    event.customer_id,
                    other,
                    merged,
                    data.reason,
                    event.source,
                    event.id,
                    event.time,
                )
            )
    return found


def standing_links(statements: Iterable[MergeStatement]) -> dict[str, str]:
    """Record -> the record it is merged into, now."""
    newest: dict[str, MergeStatement] = {}
    for statement in statements:
        known = newest.get(statement.other_id)
        if known is None or statement.rank > known.rank:
            newest[statement.other_id] = statement
    links: dict[str, str] = {}
    for statement in sorted(newest.values(), key=lambda s: s.rank):
        if statement.merged and root_of(links, statement.customer_id) != statement.other_id:
            links[statement.other_id] = statement.customer_id
    return links


def root_of(links: Mapping[str, str], customer_id: str) -> str:
    """The record naming the person `customer_id` belongs to (itself when merged into none)."""
    seen = {customer_id}
    while customer_id in links:
        customer_id = links[customer_id]
        if customer_id in seen:  # cannot happen with links from standing_links
            raise ValueError(f"merge cycle through {customer_id!r}")
        seen.add(customer_id)
    return customer_id


def members_of(links: Mapping[str, str], root: str) -> list[str]:
    """Every record of the person named by `root`, the root first, then by id."""
    others = sorted(c for c in links if root_of(links, c) == root)
    return [root, *others]


def person_of(record: str, links: Mapping[str, str], holders: Mapping[str, str]) -> str:
    """The person a record belongs to: merges are followed to their root, and an alias (a record
    named by an identifier reference) counts for the customer holding the identifier (`holders`,
    alias -> holder), whose merges are followed in turn."""
    person = root_of(links, record)
    seen = {person}
    while person in holders:
        person = root_of(links, holders[person])
        if person in seen:  # aliases holding each other: the chain stops where it closes
            break
        seen.add(person)
    return person


def person_records(root: str, links: Mapping[str, str], holders: Mapping[str, str]) -> list[str]:
    """Every record of the person named by `root` (merged or aliased into it): the root first,
    then by id."""
    others = {r for r in (*links, *holders) if r != root and person_of(r, links, holders) == root}
    return [root, *sorted(others)]


def persons(links: Mapping[str, str], holders: Mapping[str, str]) -> dict[str, str]:
    """Record -> person for every record of a person made of more than one record (its root
    included), from every standing merge and every held alias: what analyses across customers
    group by, so that one person counts once."""
    found = {record: person_of(record, links, holders) for record in (*links, *holders)}
    grouped = {record: person for record, person in found.items() if record != person}
    return {**{person: person for person in grouped.values()}, **grouped}


def persons_changed(before: Mapping[str, str], after: Mapping[str, str]) -> set[str]:
    """Of two record -> person maps (identity.persons), every record whose person changed with
    its persons before and after: whose segments must be evaluated again (a record merged away
    leaves them, the persons that gained or lost records are evaluated over their records)."""
    found: set[str] = set()
    for record in before.keys() | after.keys():
        old, new = before.get(record, record), after.get(record, record)
        if old != new:
            found |= {record, old, new}
    return found


def combined_record(person_id: str, records: Sequence[CustomerRecord]) -> CustomerRecord:
    """One record for a person: each field and entry from the record that set it last, by the
    rule of a single record (projection.wins; a full tie goes to the later record in
    `records`), with its provenance; registered at the earliest registration."""
    times: dict[str, str] = {}
    sources: dict[str, str] = {}
    contact: dict[str, str | None] = {}
    attributes: dict[str, str] = {}
    identifiers: dict[str, str] = {}
    for record in records:
        for key, when in record.field_times.items():
            source = record.field_sources.get(key, "")
            if not wins(when, source, times, sources, key):
                continue
            if key in CONTACT_FIELDS and key in record.contact:
                contact[key] = record.contact[key]
            elif key.startswith("attributes.") and key[11:] in record.attributes:
                attributes[key[11:]] = record.attributes[key[11:]]
            elif key.startswith("identifiers.") and key[12:] in record.identifiers:
                identifiers[key[12:]] = record.identifiers[key[12:]]
            else:
                continue
            times[key], sources[key] = when, source
    registered = [r.registered_at for r in records if r.registered_at is not None]
    updated = [r.updated_at for r in records if r.updated_at is not None]
    return CustomerRecord(
        person_id,
        contact,
        attributes,
        identifiers,
        times,
        min(registered, default=None),
        max(updated, default=None),
        sources,
    )


def identified_by(record: CustomerRecord) -> list[str]:
    """What makes a record an identified person (an e-mail, a phone, ids in other systems):
    merging such a record away needs to be asked for explicitly."""
    return [
        *(name for name in ("email", "phone") if record.contact.get(name)),
        *(f"{system} id" for system in sorted(record.identifiers)),
    ]
