"""Segments per person on real PostgreSQL (no Kafka): a customer merged into another, or known by
an identifier another holds, is one person, in the lapsed segment and in operator segments; the
absorbed record leaves its segments, an unmerge evaluates both again, and the members are the
same whatever the batch boundaries and wherever the definitions fall among the facts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from crm_shared.runtime.projector import RawRecord
from profile_service.api import create_app
from profile_service.config import ProfileSettings
from profile_service.worker import PROJECTION
from tests.component.partition_logs import folded_in_batches
from tests.component.service_api import api_get, database_url
from tests.component.test_operator_segments import Log, _consistent

pytestmark = pytest.mark.component

RULES: dict[str, dict[str, Any]] = {
    "complainers": {"measure": "complaints", "at_least": 3},
    "uk": {"field": "country", "in": ["UK"]},
}


def _person_log(*, other: str, unmerged: bool, definitions_last: bool) -> Log:
    """Ann (Spain, 2 complaints, bought on day 1) and `other` (UK, 1 complaint, bought on day
    30): the visitor record, merged into Ann on day 45, or orders and complaints naming Ann's
    e-mail. The clocks tick on days 40 and 65 (Ann alone is lapsed on day 40, the person on day
    65). `unmerged`: the visitor is split off again on day 70."""
    log = Log()
    if not definitions_last:
        for segment, rule in RULES.items():
            log.define(segment, rule, 0)
    registered = {"email": "ann@x.test", "country": "Spain"}
    log.event("crm.customers", 0, "crm.customer.registered.v1", "ann", registered, 1)
    if other == "visitor":
        log.register("visitor", "UK", None, 2)
    log.order("ann", 0, "o1", 1)
    log.complaint("ann", 0, "a-c1", 3)
    log.complaint("ann", 0, "a-c2", 4)
    log.order(other, 1, "o1", 30)  # the same order id as Ann's: each record numbers its own
    log.complaint(other, 1, "v-c1", 31)
    log.tick(0, 40)
    log.tick(1, 40)
    if other == "visitor":
        merged = {"merged_customer_id": "visitor"}
        log.event("crm.customers", 0, "crm.customer.merged.v1", "ann", merged, 45)
    log.tick(0, 65)
    log.tick(1, 65)
    if unmerged:
        split = {"customer_id": "visitor"}
        log.event("crm.customers", 0, "crm.customer.unmerged.v1", "ann", split, 70)
    if definitions_last:
        for segment, rule in RULES.items():
            log.define(segment, rule, 80)
    return log


async def _members(records: list[RawRecord], size: int) -> set[tuple[str, str]]:
    """The (segment, customer) members after folding in batches of `size`; the announcements
    must agree with the table (tests/component/test_operator_segments._consistent)."""
    async with folded_in_batches(PROJECTION, records, size) as pool:
        rows = await pool.fetch(
            "SELECT customer_id, segment, member, version FROM segment_memberships"
        )
        outbox = await pool.fetch("SELECT value FROM outbox ORDER BY seq")
    memberships = {(r["segment"], r["customer_id"]): (r["member"], r["version"]) for r in rows}
    announced = []
    for row in outbox:
        event = json.loads(row["value"])
        if event["type"].startswith("crm.segment."):
            data = event["data"]
            kind = event["type"].split(".")[2]
            announced.append((event["subject"], kind, data["segment"], data["version"], None))
    _consistent(memberships, announced)
    return {key for key, (member, _) in memberships.items() if member}


@pytest.mark.parametrize("definitions_last", [False, True])
async def test_a_merged_person_is_one_member_whatever_the_batches(definitions_last: bool) -> None:
    records = _person_log(other="visitor", unmerged=False, definitions_last=definitions_last)
    for size in (1, 4, len(records.records)):
        members = await _members(records.records, size)
        # 3 complaints and the newest country (the visitor's) together; bought on day 30 by the
        # visitor record, so lapsed only from day 60; the visitor record is in nothing.
        assert members == {("complainers", "ann"), ("uk", "ann"), ("lapsed", "ann")}, size


async def test_the_merge_takes_the_absorbed_record_out_and_moves_the_person() -> None:
    log = _person_log(other="visitor", unmerged=False, definitions_last=False)
    async with folded_in_batches(PROJECTION, log.records, 1) as pool:
        rows = await pool.fetch("SELECT value FROM outbox ORDER BY seq")
        settings = ProfileSettings(database_url=await database_url(pool))
        asked = await api_get(create_app(settings), settings, "/customers/visitor/segments")
    announced = [
        (e["subject"], e["type"].split(".")[2], e["data"]["segment"], e["time"][:10])
        for e in (json.loads(row["value"]) for row in rows)
    ]
    assert announced == [
        ("visitor", "entered", "uk", "2024-01-03"),
        ("ann", "entered", "lapsed", "2024-02-01"),  # day 31: her own purchase of day 1
        ("visitor", "left", "uk", "2024-02-15"),  # the merge, day 45
        ("ann", "left", "lapsed", "2024-02-15"),  # the visitor's purchase of day 30 counts
        ("ann", "entered", "complainers", "2024-02-15"),
        ("ann", "entered", "uk", "2024-02-15"),
        ("ann", "entered", "lapsed", "2024-03-01"),  # day 60: 30 days after the person's last
    ]
    # Asking for the merged record answers for its person.
    answer = asked.json()
    assert answer["customer_id"] == "ann"
    assert [m["segment"] for m in answer["segments"]] == ["complainers", "lapsed", "uk"]


async def test_an_unmerge_evaluates_both_records_again() -> None:
    log = _person_log(other="visitor", unmerged=True, definitions_last=False)
    for size in (1, 5):
        members = await _members(log.records, size)
        assert members == {("lapsed", "ann"), ("uk", "visitor"), ("lapsed", "visitor")}, size


@pytest.mark.parametrize("definitions_last", [False, True])
async def test_events_naming_the_persons_email_count_for_the_person(
    definitions_last: bool,
) -> None:
    log = _person_log(other="email:ann@x.test", unmerged=False, definitions_last=definitions_last)
    for size in (1, 3, len(log.records)):
        members = await _members(log.records, size)
        # Her country stays Spain; the complaint and the order of day 30 count for her.
        assert members == {("complainers", "ann"), ("lapsed", "ann")}, size
