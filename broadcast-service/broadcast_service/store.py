"""All SQL of the broadcast service. The caller owns the transaction."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from enum import StrEnum
from functools import lru_cache
from typing import Any

import asyncpg

from broadcast_service.campaigns import (
    Addressee,
    Campaign,
    CustomerContact,
    CustomerProducts,
    PlannedMessage,
    Product,
    Reached,
    Recipient,
)
from broadcast_service.decision import CustomerReach, reach_of, registered_addresses
from broadcast_service.delivery import OutboundMessage
from broadcast_service.projection import (
    ChannelPreferences,
    ChannelSetup,
    ComplaintHold,
    Consent,
    ConsentKey,
    DetractorHold,
    DncKey,
    DoNotContact,
    QuietWindow,
    RecentSend,
    SegmentMembership,
)
from crm_shared.contracts.events import CampaignDefined, CampaignTarget
from crm_shared.runtime.db import columns
from crm_shared.runtime.packed import UnnestColumns

# The order of each state's `version`, in SQL, for the WHERE that keeps a newer stored row: text
# compared by code point (COLLATE "C") as Python compares it.
_PREFERENCE_VERSION = '({t}.set_at, {t}.source COLLATE "C", {t}.event_id COLLATE "C")'
_CONSENT_VERSION = (
    "({t}.changed_at, CASE {t}.state WHEN 'granted' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END,"
    ' {t}.source COLLATE "C", {t}.event_id COLLATE "C")'
)
_LISTED_VERSION = '({t}.changed_at, {t}.{flag}, {t}.source COLLATE "C", {t}.event_id COLLATE "C")'


@lru_cache(maxsize=4096)
def _quiet_window(start: str, end: str, timezone: str) -> QuietWindow:
    """One object per distinct window: a plan reads a million set-ups that share a few (and the
    decision's quiet-hours cache then hashes the same object)."""
    return QuietWindow(time.fromisoformat(start), time.fromisoformat(end), timezone)


def _setup(item: Mapping[str, Any]) -> ChannelSetup:
    start = item.get("quiet_start")
    paused = item.get("paused_until")
    return ChannelSetup(
        item["channel"],
        item.get("address"),
        None if start is None else _quiet_window(start, item["quiet_end"], item["quiet_timezone"]),
        item.get("max_per_day"),
        item.get("max_per_week"),
        None if paused is None else datetime.fromisoformat(paused),
    )


def _setup_item(setup: ChannelSetup) -> dict[str, Any]:
    quiet = setup.quiet_hours
    return {
        "channel": setup.channel,
        "address": setup.address,
        "quiet_start": None if quiet is None else f"{quiet.start:%H:%M}",
        "quiet_end": None if quiet is None else f"{quiet.end:%H:%M}",
        "quiet_timezone": None if quiet is None else quiet.timezone,
        "max_per_day": setup.max_per_day,
        "max_per_week": setup.max_per_week,
        "paused_until": None if setup.paused_until is None else setup.paused_until.isoformat(),
    }


def _preferences(row: Mapping[str, Any]) -> ChannelPreferences:
    return ChannelPreferences(
        customer_id=row["customer_id"],
        channels=tuple(_setup(item) for item in row["settings"]),
        timezone=row["timezone"],
        set_at=row["set_at"],
        source=row["source"],
        event_id=row["event_id"],
    )


def _consent(row: Mapping[str, Any]) -> Consent:
    return Consent(
        customer_id=row["customer_id"],
        purpose=row["purpose"],
        channel=row["channel"],
        state=row["state"],
        changed_at=row["changed_at"],
        source=row["source"],
        event_id=row["event_id"],
        capture_method=row["capture_method"],
        wording_version=row["wording_version"],
        evidence=row["evidence"],
    )


async def lock_preferences(
    conn: asyncpg.Connection, ids: Collection[str]
) -> dict[str, ChannelPreferences]:
    """The stored preferences of these customers, locked until the batch commits."""
    rows = await conn.fetch(
        "SELECT * FROM channel_preferences WHERE customer_id = ANY($1::text[]) FOR UPDATE",
        list(ids),
    )
    return {row["customer_id"]: _preferences(row) for row in rows}


async def save_preferences(
    conn: asyncpg.Connection, records: Collection[ChannelPreferences]
) -> None:
    if not records:
        return
    # The WHERE is a second line of defence: never overwrite a newer row, even if two workers
    # raced on a customer's first preferences during a rebalance. Channel lists travel as
    # comma-separated text and set-ups as JSON text: unnest cannot take an array of arrays of
    # different lengths (a list of lists would be read as one two-dimensional array).
    await conn.execute(
        f"""
        INSERT INTO channel_preferences AS p (customer_id, channels, timezone, settings, set_at,
                                              source, event_id)
        SELECT customer_id, string_to_array(channels, ','), timezone, settings::jsonb, set_at,
               source, event_id
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                    $6::text[], $7::text[])
             AS r(customer_id, channels, timezone, settings, set_at, source, event_id)
        ON CONFLICT (customer_id) DO UPDATE SET
            channels = EXCLUDED.channels, timezone = EXCLUDED.timezone,
            settings = EXCLUDED.settings, quiet_start = NULL, quiet_end = NULL,
            quiet_timezone = NULL, set_at = EXCLUDED.set_at, source = EXCLUDED.source,
            event_id = EXCLUDED.event_id
        WHERE {_PREFERENCE_VERSION.format(t="p")} < {_PREFERENCE_VERSION.format(t="EXCLUDED")}
        """,
        *(list(column) for column in zip(*map(_preference_row, records), strict=True)),
    )


def _preference_row(r: ChannelPreferences) -> tuple[Any, ...]:
    return (
        r.customer_id,
        ",".join(setup.channel for setup in r.channels),
        r.timezone,
        json.dumps([_setup_item(setup) for setup in r.channels]),
        r.set_at,
        r.source,
        r.event_id,
    )


async def lock_consents(
    conn: asyncpg.Connection, customer_ids: Collection[str]
) -> dict[ConsentKey, Consent]:
    """Every stored consent of these customers (a handful each), locked until the batch commits."""
    rows = await conn.fetch(
        "SELECT * FROM consents WHERE customer_id = ANY($1::text[]) FOR UPDATE",
        list(customer_ids),
    )
    consents = [_consent(row) for row in rows]
    return {consent.key: consent for consent in consents}


_CONSENT_FIELDS = (
    "customer_id",
    "purpose",
    "channel",
    "granted",
    "state",
    "capture_method",
    "wording_version",
    "evidence",
    "changed_at",
    "source",
    "event_id",
)
_CONSENT_ROWS = UnnestColumns.named(_CONSENT_FIELDS, granted="boolean", changed_at="timestamptz")


async def save_consents(conn: asyncpg.Connection, consents: Collection[Consent]) -> None:
    """Write the consent states; a stored state that the pure rule ranks higher is kept, so a
    grant never overwrites a refusal of the same instant, whatever batch it came in."""
    if not consents:
        return
    await conn.execute(
        f"""
        INSERT INTO consents AS c ({_CONSENT_ROWS.names}) {_CONSENT_ROWS.select}
        ON CONFLICT (customer_id, purpose, channel) DO UPDATE SET
            granted = EXCLUDED.granted, state = EXCLUDED.state,
            capture_method = EXCLUDED.capture_method,
            wording_version = EXCLUDED.wording_version, evidence = EXCLUDED.evidence,
            changed_at = EXCLUDED.changed_at, source = EXCLUDED.source,
            event_id = EXCLUDED.event_id
        WHERE {_CONSENT_VERSION.format(t="c")} < {_CONSENT_VERSION.format(t="EXCLUDED")}
        """,
        *_CONSENT_ROWS.arguments(columns(consents, *_CONSENT_FIELDS)),
    )


async def add_history(conn: asyncpg.Connection, changes: Collection[Consent]) -> None:
    """Append consent events to the history; one already there (same source and id) is kept."""
    if not changes:
        return
    await conn.execute(
        f"""
        INSERT INTO consent_history (customer_id, purpose, channel, granted, state,
                                     capture_method, wording_version, evidence, occurred_at,
                                     source, event_id)
        {_CONSENT_ROWS.select}
        ON CONFLICT (source, event_id) DO NOTHING
        """,
        *_CONSENT_ROWS.arguments(columns(changes, *_CONSENT_FIELDS)),
    )


async def history_of(conn: asyncpg.Connection, customer_id: str, limit: int) -> list[Consent]:
    """The customer's consent events with their evidence, newest first."""
    rows = await conn.fetch(
        """
        SELECT customer_id, purpose, channel, state, capture_method, wording_version, evidence,
               occurred_at AS changed_at, source, event_id
        FROM consent_history WHERE customer_id = $1
        ORDER BY occurred_at DESC, source, event_id
        LIMIT $2
        """,
        customer_id,
        limit,
    )
    return [_consent(row) for row in rows]


def _do_not_contact(row: Mapping[str, Any]) -> DoNotContact:
    return DoNotContact(
        customer_id=row["customer_id"],
        channel=row["channel"],
        listed=row["listed"],
        reason=row["reason"],
        note=row["note"],
        changed_at=row["changed_at"],
        source=row["source"],
        event_id=row["event_id"],
    )


async def lock_do_not_contact(
    conn: asyncpg.Connection, customer_ids: Collection[str]
) -> dict[DncKey, DoNotContact]:
    rows = await conn.fetch(
        "SELECT * FROM do_not_contact WHERE customer_id = ANY($1::text[]) FOR UPDATE",
        list(customer_ids),
    )
    return {(row["customer_id"], row["channel"]): _do_not_contact(row) for row in rows}


async def save_do_not_contact(conn: asyncpg.Connection, entries: Collection[DoNotContact]) -> None:
    """Write the newer entries; the guard repeats the pure rule (an entry beats its removal)."""
    if not entries:
        return
    version = _LISTED_VERSION
    await conn.execute(
        f"""
        INSERT INTO do_not_contact AS d (customer_id, channel, listed, reason, note, changed_at,
                                         source, event_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::text[], $5::text[],
                             $6::timestamptz[], $7::text[], $8::text[])
        ON CONFLICT (customer_id, channel) DO UPDATE SET
            listed = EXCLUDED.listed, reason = EXCLUDED.reason, note = EXCLUDED.note,
            changed_at = EXCLUDED.changed_at, source = EXCLUDED.source,
            event_id = EXCLUDED.event_id
        WHERE {version.format(t="d", flag="listed")} < {version.format(t="EXCLUDED", flag="listed")}
        """,
        *columns(
            entries,
            "customer_id",
            "channel",
            "listed",
            "reason",
            "note",
            "changed_at",
            "source",
            "event_id",
        ),
    )


def _complaint(row: Mapping[str, Any]) -> ComplaintHold:
    return ComplaintHold(
        customer_id=row["customer_id"],
        case_id=row["case_id"],
        open=row["open"],
        changed_at=row["changed_at"],
        source=row["source"],
        event_id=row["event_id"],
    )


async def lock_complaints(
    conn: asyncpg.Connection, customer_ids: Collection[str]
) -> dict[tuple[str, str], ComplaintHold]:
    rows = await conn.fetch(
        "SELECT * FROM complaint_holds WHERE customer_id = ANY($1::text[]) FOR UPDATE",
        list(customer_ids),
    )
    return {(row["customer_id"], row["case_id"]): _complaint(row) for row in rows}


async def save_complaints(conn: asyncpg.Connection, complaints: Collection[ComplaintHold]) -> None:
    """Write the newer complaint states; the guard repeats the pure rule (open beats closed)."""
    if not complaints:
        return
    version = _LISTED_VERSION
    await conn.execute(
        f"""
        INSERT INTO complaint_holds AS h (customer_id, case_id, open, changed_at, source,
                                          event_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::timestamptz[],
                             $5::text[], $6::text[])
        ON CONFLICT (customer_id, case_id) DO UPDATE SET
            open = EXCLUDED.open, changed_at = EXCLUDED.changed_at, source = EXCLUDED.source,
            event_id = EXCLUDED.event_id
        WHERE {version.format(t="h", flag="open")} < {version.format(t="EXCLUDED", flag="open")}
        """,
        *columns(complaints, "customer_id", "case_id", "open", "changed_at", "source", "event_id"),
    )


def _detractor(row: Mapping[str, Any]) -> DetractorHold:
    return DetractorHold(
        customer_id=row["customer_id"],
        measure=row["measure"],
        score=row["score"],
        scored_at=row["scored_at"],
        source=row["source"],
        event_id=row["event_id"],
    )


async def lock_detractors(
    conn: asyncpg.Connection, customer_ids: Collection[str]
) -> dict[str, DetractorHold]:
    rows = await conn.fetch(
        "SELECT * FROM detractor_holds WHERE customer_id = ANY($1::text[]) FOR UPDATE",
        list(customer_ids),
    )
    return {row["customer_id"]: _detractor(row) for row in rows}


async def save_detractors(conn: asyncpg.Connection, scores: Collection[DetractorHold]) -> None:
    """Write each customer's latest detractor score; an older one never replaces a newer."""
    if not scores:
        return
    await conn.execute(
        f"""
        INSERT INTO detractor_holds AS h (customer_id, measure, score, scored_at, source,
                                          event_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $5::text[],
                             $6::text[])
        ON CONFLICT (customer_id) DO UPDATE SET
            measure = EXCLUDED.measure, score = EXCLUDED.score, scored_at = EXCLUDED.scored_at,
            source = EXCLUDED.source, event_id = EXCLUDED.event_id
        WHERE {_DETRACTOR_VERSION.format(t="h")} < {_DETRACTOR_VERSION.format(t="EXCLUDED")}
        """,
        *columns(scores, "customer_id", "measure", "score", "scored_at", "source", "event_id"),
    )


_DETRACTOR_VERSION = '({t}.scored_at, {t}.source COLLATE "C", {t}.event_id COLLATE "C")'


_REACHES = """
SELECT k.customer_id, p.set_at, p.settings, p.timezone, p.source, p.event_id,
       ARRAY(SELECT c FROM consents c WHERE c.customer_id = k.customer_id) AS consents,
       ARRAY(SELECT d FROM do_not_contact d WHERE d.customer_id = k.customer_id AND d.listed)
           AS listed,
       ARRAY(SELECT h FROM complaint_holds h WHERE h.customer_id = k.customer_id AND h.open)
           AS complaints,
       (SELECT h FROM detractor_holds h WHERE h.customer_id = k.customer_id) AS detractor,
       (SELECT r FROM customer_contacts r WHERE r.customer_id = k.customer_id) AS contact
FROM {customers}
LEFT JOIN channel_preferences p USING (customer_id)
"""
"""Each customer's rows of every table the decision reads: one statement, where one per table
cost five more round trips, each about 0.1 ms of the API's CPU and as much of PostgreSQL's
(docs/performance.md). The other tables' rows come as row values (asyncpg decodes them as
records); the channel set-up's as columns, as asyncpg cannot decode a row value holding jsonb
read through our text codec."""
_REACHES_OF_MANY = _REACHES.format(customers="unnest($1::text[]) AS k(customer_id)")
_REACH_OF_ONE = _REACHES.format(customers="(SELECT $1::text AS customer_id) AS k")
"""One customer's, without the array: PostgreSQL prices `unnest` of a parameter at 100 rows, so
the plan it would keep for the prepared statement (made without the ids) looked dearer than one
made for each call's single id, and it planned every read of the API again, 0.2 ms of its CPU
(docs/performance.md, plans kept for the 360's reads)."""


async def reaches_of(
    conn: asyncpg.Connection, customer_ids: Collection[str]
) -> dict[str, CustomerReach]:
    """Everything the contact decision reads about these customers, in one statement for the
    whole batch (a sender's batch and a plan's examples: never a whole plan's recipients).
    Every customer asked for has an entry; one the service knows nothing of has no set-up."""
    rows = await conn.fetch(_REACHES_OF_MANY, list(dict.fromkeys(customer_ids)))
    return {row["customer_id"]: _reach(row) for row in rows}


async def reach_of_customer(conn: asyncpg.Connection, customer_id: str) -> CustomerReach:
    """What `reaches_of` gives for one customer (the preferences read and the decision API),
    in a statement PostgreSQL plans once per connection."""
    row = await conn.fetchrow(_REACH_OF_ONE, customer_id)
    assert row is not None  # the customer's row is there whatever the service knows
    return _reach(row)


def _reach(row: Mapping[str, Any]) -> CustomerReach:
    detractor, contact = row["detractor"], row["contact"]
    return reach_of(
        None if row["set_at"] is None else _preferences(row),
        [_consent(c) for c in row["consents"]],
        [_do_not_contact(d) for d in row["listed"]],
        [_complaint(h) for h in row["complaints"]],
        detractor=None if detractor is None else _detractor(detractor),
        registered=None
        if contact is None
        else registered_addresses(contact["email"], contact["phone"]),
    )


async def is_known(conn: asyncpg.Connection, customer_id: str) -> bool:
    """Whether the service holds any preference, consent or do-not-contact entry of the
    customer."""
    known: bool = await conn.fetchval(
        """
        SELECT EXISTS (SELECT 1 FROM channel_preferences WHERE customer_id = $1)
            OR EXISTS (SELECT 1 FROM consents WHERE customer_id = $1)
            OR EXISTS (SELECT 1 FROM do_not_contact WHERE customer_id = $1)
        """,
        customer_id,
    )
    return known


def _membership(row: Mapping[str, Any]) -> SegmentMembership:
    return SegmentMembership(
        customer_id=row["customer_id"],
        segment=row["segment"],
        member=row["member"],
        version_number=row["version"],
        changed_at=row["changed_at"],
        source=row["source"],
        event_id=row["event_id"],
    )


async def lock_memberships(
    conn: asyncpg.Connection, customer_ids: Collection[str]
) -> dict[tuple[str, str], SegmentMembership]:
    """The stored memberships of these customers, locked until the batch commits."""
    rows = await conn.fetch(
        "SELECT * FROM segment_memberships WHERE customer_id = ANY($1::text[]) FOR UPDATE",
        list(customer_ids),
    )
    return {(row["customer_id"], row["segment"]): _membership(row) for row in rows}


async def save_memberships(
    conn: asyncpg.Connection, memberships: Collection[SegmentMembership]
) -> None:
    """Write the newer memberships; the guard repeats the pure rule (higher version wins)."""
    if not memberships:
        return
    await conn.execute(
        """
        INSERT INTO segment_memberships AS m (customer_id, segment, member, version, changed_at,
                                              source, event_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::int[], $5::timestamptz[],
                             $6::text[], $7::text[])
        ON CONFLICT (customer_id, segment) DO UPDATE SET
            member = EXCLUDED.member, version = EXCLUDED.version,
            changed_at = EXCLUDED.changed_at, source = EXCLUDED.source,
            event_id = EXCLUDED.event_id
        WHERE m.version < EXCLUDED.version
        """,
        *columns(
            memberships,
            "customer_id",
            "segment",
            "member",
            "version_number",
            "changed_at",
            "source",
            "event_id",
        ),
    )


async def memberships_of(conn: asyncpg.Connection, customer_id: str) -> list[SegmentMembership]:
    rows = await conn.fetch(
        "SELECT * FROM segment_memberships WHERE customer_id = $1 ORDER BY segment", customer_id
    )
    return [_membership(row) for row in rows]


async def recent_sends(
    conn: asyncpg.Connection, customer_ids: Collection[str], since: datetime
) -> dict[str, list[RecentSend]]:
    """The messages sent to these customers since `since`, by every campaign, oldest first."""
    rows = await conn.fetch(
        "SELECT customer_id, channel, purpose, sent_at FROM outbound_messages"
        " WHERE state = 'sent' AND customer_id = ANY($1::text[]) AND sent_at >= $2"
        " ORDER BY sent_at",
        list(customer_ids),
        since,
    )
    sends: dict[str, list[RecentSend]] = {}
    for row in rows:
        sends.setdefault(row["customer_id"], []).append(
            RecentSend(row["channel"], row["purpose"], row["sent_at"])
        )
    return sends


# Campaigns: definitions, plans and progress.


def _campaign(row: Mapping[str, Any]) -> Campaign:
    return Campaign(
        campaign_id=row["campaign_id"],
        definition=CampaignDefined.model_validate(row["definition"]),
        send_at=row["send_at"],
        state=row["state"],
        defined_at=row["defined_at"],
        source=row["source"],
        event_id=row["event_id"],
        planned_at=row["planned_at"],
        cancelled_at=row["cancelled_at"],
        cancel_reason=row["cancel_reason"],
    )


async def lock_campaigns(conn: asyncpg.Connection, ids: Collection[str]) -> dict[str, Campaign]:
    """The stored campaigns of these ids, locked until the batch commits."""
    rows = await conn.fetch(
        "SELECT * FROM campaigns WHERE campaign_id = ANY($1::text[]) FOR UPDATE", list(ids)
    )
    return {row["campaign_id"]: _campaign(row) for row in rows}


async def save_campaigns(conn: asyncpg.Connection, campaigns: Collection[Campaign]) -> None:
    """Write the campaigns as the pure fold left them (it already kept planned ones fixed)."""
    for c in campaigns:
        await conn.execute(
            """
            INSERT INTO campaigns (campaign_id, name, kind, purpose, definition, send_at, state,
                                   defined_at, source, event_id, planned_at, cancelled_at,
                                   cancel_reason)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            ON CONFLICT (campaign_id) DO UPDATE SET
                name = EXCLUDED.name, kind = EXCLUDED.kind, purpose = EXCLUDED.purpose,
                definition = EXCLUDED.definition, send_at = EXCLUDED.send_at,
                state = EXCLUDED.state, defined_at = EXCLUDED.defined_at,
                source = EXCLUDED.source, event_id = EXCLUDED.event_id,
                cancelled_at = EXCLUDED.cancelled_at, cancel_reason = EXCLUDED.cancel_reason
            """,
            c.campaign_id,
            c.definition.name,
            c.definition.kind.value,
            c.definition.purpose.value,
            c.definition.model_dump(mode="json"),
            c.send_at,
            c.state,
            c.defined_at,
            c.source,
            c.event_id,
            c.planned_at,
            c.cancelled_at,
            c.cancel_reason,
        )


async def start_due_campaigns(conn: asyncpg.Connection, now: datetime) -> int:
    """Mark the scheduled campaigns whose send instant has come 'planning'; how many."""
    status = await conn.execute(
        "UPDATE campaigns SET state = 'planning' WHERE state = 'scheduled' AND send_at <= $1", now
    )
    return int(status.rsplit(" ", 1)[1])


async def next_planning(conn: asyncpg.Connection) -> Campaign | None:
    """The oldest campaign being planned (not locked: each chunk is written under
    `lock_planning`, only if its range is not planned yet)."""
    row = await conn.fetchrow(
        "SELECT * FROM campaigns WHERE state = 'planning' ORDER BY send_at, campaign_id LIMIT 1"
    )
    return None if row is None else _campaign(row)


@dataclass(frozen=True)
class PlanRange:
    """One chunk of a campaign's recipients: those after `after` up to `last`, in id order."""

    number: int
    after: str | None
    """None: from the first recipient."""
    last: str | None
    """None: to the last recipient."""


def cut_ranges(after: str | None, ends: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """The ranges from `after` on, each ending at one of `ends` (ascending), and the last one
    open-ended: recipients who join the target meanwhile fall in one of them."""
    bounds = [after, *ends]
    return [*zip(bounds, ends, strict=False), (bounds[-1], None)]


async def ranges_to_plan(
    conn: asyncpg.Connection, campaign: Campaign, read: SignatureRead
) -> list[PlanRange]:
    """The campaign's ranges not planned yet, cut first if its planning has just started (the
    campaign locked meanwhile, so two planners cut them once). None left: the campaign is marked
    planned (its ranges came planned, carried by a forced rebuild), or is no longer being
    planned."""
    campaign_id = campaign.campaign_id
    async with conn.transaction():
        state = await conn.fetchval(
            "SELECT state FROM campaigns WHERE campaign_id = $1 FOR UPDATE", campaign_id
        )
        if state != "planning":
            return []
        cut = await conn.fetchrow(
            "SELECT bool_or(last IS NULL) AS whole, max(number) AS number, max(last) AS last"
            " FROM plan_ranges WHERE campaign_id = $1",
            campaign_id,
        )
        assert cut is not None  # one row: an aggregate without GROUP BY
        if not cut["whole"]:
            after = cut["last"]
            ends = await range_ends(conn, read, after)
            first = 0 if cut["number"] is None else cut["number"] + 1
            ranges = cut_ranges(after, ends)
            await conn.executemany(
                "INSERT INTO plan_ranges (campaign_id, number, after, last)"
                " VALUES ($1, $2, $3, $4)",
                [(campaign_id, first + n, a, b) for n, (a, b) in enumerate(ranges)],
            )
        rows = await conn.fetch(
            "SELECT number, after, last FROM plan_ranges WHERE campaign_id = $1 AND NOT planned"
            " ORDER BY number",
            campaign_id,
        )
        if not rows:
            await finish_plan(conn, campaign_id, campaign.send_at)
    return [PlanRange(r["number"], r["after"], r["last"]) for r in rows]


async def claim_range(conn: asyncpg.Connection, campaign_id: str, number: int) -> bool:
    """Hold the range for this connection's session (False: another planner holds it), so that
    planners sharing a campaign read different ranges; `release_range` lets it go, and so does
    the session's end (a crashed planner's ranges are planned by the next)."""
    claimed: bool = await conn.fetchval(
        "SELECT pg_try_advisory_lock(hashtext($1), $2)", campaign_id, number
    )
    return claimed


async def release_range(conn: asyncpg.Connection, campaign_id: str, number: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock(hashtext($1), $2)", campaign_id, number)


class NotPlanned(StrEnum):
    """Why a planner does not plan a range it read (`lock_planning`)."""

    CAMPAIGN_STOPPED = "campaign stopped"  # cancelled: no range of it is planned any more
    RANGE_PLANNED = "range planned"  # by another planner meanwhile: the other ranges go on


async def lock_planning(
    conn: asyncpg.Connection, campaign_id: str, number: int
) -> int | NotPlanned:
    """Lock the campaign until the caller's transaction commits and mark the range planned; the
    messages the campaign planned so far (the throttle's first number for this chunk), or why
    the range is not planned now: the campaign is no longer being planned, or the range was
    planned already (by a planner that held it before)."""
    messages: int | None = await conn.fetchval(
        "SELECT plan_messages FROM campaigns WHERE campaign_id = $1 AND state = 'planning'"
        " FOR UPDATE",
        campaign_id,
    )
    if messages is None:
        return NotPlanned.CAMPAIGN_STOPPED
    status = await conn.execute(
        "UPDATE plan_ranges SET planned = true"
        " WHERE campaign_id = $1 AND number = $2 AND NOT planned",
        campaign_id,
        number,
    )
    return messages if status == "UPDATE 1" else NotPlanned.RANGE_PLANNED


# A target's recipients up to $3 (NULL: to the last) that are {after}: after $2 (`_AFTER`), or
# after a column.
_SEGMENT_MEMBERS = """
SELECT customer_id FROM segment_memberships
WHERE segment = $1 AND member AND {after} AND ($3::text IS NULL OR customer_id <= $3)
"""
_LISTED = """
SELECT DISTINCT customer_id FROM unnest($1::text[]) AS listed(customer_id)
WHERE {after} AND ($3::text IS NULL OR customer_id <= $3)
"""
_AFTER = "($2::text IS NULL OR customer_id > $2)"
"""After $2 (NULL: from the first)."""


async def recipients_of(
    conn: asyncpg.Connection, customer_ids: Sequence[str], since: datetime
) -> list[Recipient]:
    """These customers with what the decision reads (`reaches_of`, the same loader as the
    decision API's, so a plan and a single decision agree) and their sends since `since`."""
    if not customer_ids:
        return []
    reaches = await reaches_of(conn, customer_ids)
    sends = await recent_sends(conn, customer_ids, since)
    return [Recipient(i, reaches[i], tuple(sends.get(i, ()))) for i in customer_ids]


# A recipient's decision signature: everything `reaches_of` and `recent_sends` give the decision
# for a campaign's purpose, but for what the decision only passes through or compares among
# itself (docs/decisions.md, "Planning by decision signature"): addresses become whether there
# is one (the row takes the recipient's own), consent instants their order within the
# customer's consents of the purpose, open complaints whether there is one, sends only those of
# channels with a cap. The rest is as stored, so recipients with equal signatures are decided
# alike by `contact_decision`. $4 is the campaign's purpose (normalised), $5 `sends_since`.
_SIGNATURE = """
ROW(p.timezone, s.shape, coalesce(c.email, '') <> '', coalesce(c.phone, '') <> '', k.consents,
    d.listed, h.customer_id IS NOT NULL, t.scored_at,
    CASE WHEN s.capped IS NOT NULL THEN
        (SELECT array_agg(ROW(o.channel, o.sent_at) ORDER BY o.sent_at, o.channel COLLATE "C")
         FROM outbound_messages AS o
         WHERE o.state = 'sent' AND o.customer_id = r.customer_id AND o.sent_at >= $5
           AND o.channel = ANY (s.capped))
    END)::text
"""
# The chunk's rows of the set-ups, contacts, consents, do-not-contact entries and holds are read
# by their ids (index scans), not joined whole: a join would scan every table once per chunk. A
# dense chunk (most customers between its first and last id are in it) reads them by that id
# range instead: one index range scan a table rather than one descent a recipient, the same rows
# joined to each recipient. Only the sends are read a recipient at a time (by id and instant),
# and only for recipients with a cap.
#
# A customer's consents are aggregated in the order of one sort, by instant then channel, with
# no ORDER BY in the aggregate (in PostgreSQL 15 that sorts each customer's consents apart, as
# much again as the rest of the consents' read). The order only decides which equal consents
# look alike: each element carries its channel, state, method and rank, so two customers whose
# arrays are equal have equal consents whatever the order; the sort only makes equal consents
# give equal arrays, so that they share a signature. The sort compares ids by code point
# (COLLATE "C", memcmp): it only groups a customer's consents, and the database's collation
# (even C.UTF-8) compares through the C library, several times slower.
#
# The set-up's shape is made text where it is made, once per distinct set-up when the planner
# memoizes the lateral join on the settings (as it does on the bench's), not once a recipient
# when the signature is: the signature's text is the same, a text column's output being the
# jsonb's.
_SIGNED = """
WITH chunk AS MATERIALIZED (SELECT customer_id, row_number() OVER (ORDER BY customer_id) AS place
                            FROM ({members}) AS members),
     chunk_ids AS (SELECT array_agg(customer_id) AS ids FROM chunk),
     chunk_span AS (SELECT min(customer_id) AS lo, max(customer_id) AS hi FROM chunk)
SELECT r.customer_id, r.place, {signature} AS signature, s.addresses, c.email, c.phone
FROM chunk AS r
LEFT JOIN channel_preferences AS p ON p.customer_id = r.customer_id AND {p_in_chunk}
LEFT JOIN customer_contacts AS c ON c.customer_id = r.customer_id AND {c_in_chunk}
LEFT JOIN (
    SELECT customer_id, array_agg(ROW(channel, state, capture_method, rank)) AS consents
    FROM (SELECT customer_id, channel, state, capture_method,
                 dense_rank() OVER (PARTITION BY customer_id ORDER BY changed_at) AS rank
          FROM (SELECT customer_id COLLATE "C" AS customer_id, channel, state, capture_method,
                       changed_at
                FROM consents AS k
                WHERE {k_in_chunk} AND purpose = $4
                ORDER BY 1, changed_at, channel COLLATE "C") AS sorted) AS ranked
    GROUP BY customer_id
) AS k ON k.customer_id = r.customer_id COLLATE "C"
LEFT JOIN (
    SELECT customer_id, array_agg(ROW(channel, reason) ORDER BY channel COLLATE "C") AS listed
    FROM do_not_contact AS d
    WHERE {d_in_chunk} AND listed
    GROUP BY customer_id
) AS d ON d.customer_id = r.customer_id
LEFT JOIN (
    SELECT DISTINCT customer_id FROM complaint_holds AS h WHERE {h_in_chunk} AND open
) AS h ON h.customer_id = r.customer_id
LEFT JOIN detractor_holds AS t ON t.customer_id = r.customer_id AND {t_in_chunk}
LEFT JOIN LATERAL (
    SELECT jsonb_agg((e - 'address') || jsonb_build_object('address', e ->> 'address' IS NOT NULL)
                     ORDER BY n)::text AS shape,
           CASE WHEN bool_or(e ->> 'address' IS NOT NULL)
                THEN array_agg(e ->> 'address' ORDER BY n) END AS addresses,
           array_agg(e ->> 'channel')
               FILTER (WHERE e ->> 'max_per_day' IS NOT NULL OR e ->> 'max_per_week' IS NOT NULL)
               AS capped
    FROM jsonb_array_elements(p.settings) WITH ORDINALITY AS u(e, n)
) AS s ON true
"""
# The groups, numbered in the order of their least ids, and one row more for the whole chunk
# (its signature NULL: a signature never is): how many recipients it holds.
_GROUPS = """
SELECT signature, min(customer_id) AS example, count(*) AS recipients,
       row_number() OVER (ORDER BY GROUPING(signature), min(customer_id)) AS number
FROM {signed} GROUP BY GROUPING SETS ((signature), ())
"""
_SIGNATURE_GROUPS = _GROUPS.format(signed=f"({_SIGNED}) AS signed")
# A plan keeps the chunk's recipients (who, their place in the chunk, their signature's number,
# addresses) for its INSERT ... SELECT: the signatures are built once, only their groups come
# back to the planner, and the long signature text is neither stored nor joined on again. The
# table is the session's, emptied for each chunk: the chunk is read in one transaction and
# written in the next (`add_plan_chunk`).
_PLAN_RECIPIENTS = """
CREATE TEMP TABLE IF NOT EXISTS plan_recipients (
    customer_id text, place bigint, signature bigint, addresses text[], email text, phone text
)
"""
_KEPT_SIGNATURE_GROUPS = f"""
WITH signed AS MATERIALIZED ({_SIGNED}),
     groups AS MATERIALIZED ({_GROUPS.format(signed="signed")}),
     kept AS (INSERT INTO plan_recipients
              SELECT s.customer_id, s.place, g.number, s.addresses, s.email, s.phone
              FROM signed AS s JOIN groups AS g ON g.signature = s.signature)
SELECT * FROM groups
"""


@dataclass(frozen=True)
class SignatureRead:
    """Which recipients a plan or dry run reads by decision signature, and for what."""

    target: CampaignTarget
    purpose: str
    """The campaign's purpose, normalised: the consents read are this purpose's."""
    since: datetime
    """`sends_since` the decision instant."""
    limit: int
    """Recipients per chunk (a plan's ranges hold this many when cut)."""


def _members(target: CampaignTarget) -> tuple[str, object]:
    """The statement listing a target's recipients after $2 up to $3, and $1."""
    if target.segment is not None:
        return _SEGMENT_MEMBERS.format(after=_AFTER), target.segment
    return _LISTED.format(after=_AFTER), list(target.customer_ids or ())


_CHUNK_TABLES = "pckdht"
"""The aliases in `_SIGNED` of the tables whose rows of the chunk are read by id or by range."""
_BY_IDS = "{t}.customer_id = ANY ((SELECT ids FROM chunk_ids)::text[])"
_BY_RANGE = "{t}.customer_id BETWEEN (SELECT lo FROM chunk_span) AND (SELECT hi FROM chunk_span)"


async def _signed(
    conn: asyncpg.Connection,
    shape: str,
    read: SignatureRead,
    after: str | None,
    last: str | None,
    dense: bool,
) -> list[asyncpg.Record]:
    """The chunk of recipients after `after` up to `last` read by `shape` (by id range if
    `dense`), with JIT off in the caller's transaction: it costs more than it saves on these
    statements."""
    await conn.execute("SET LOCAL jit = off")
    members, key = _members(read.target)
    in_chunk = _BY_RANGE if dense else _BY_IDS
    statement = shape.format(
        members=members,
        signature=_SIGNATURE,
        **{f"{table}_in_chunk": in_chunk.format(t=table) for table in _CHUNK_TABLES},
    )
    rows: list[asyncpg.Record] = await conn.fetch(
        statement, key, after, last, read.purpose, read.since
    )
    return rows


# Every $4-th recipient after $2, in id order: the ends of a plan's ranges. A segment's are found
# a hop at a time, each the $4-th member after the one before it (an index-only scan that skips
# to it: about a third of the cost of numbering every member); a list's are numbered in one pass
# (a hop would unnest the list again).
_SEGMENT_ENDS = f"""
WITH RECURSIVE ends(customer_id) AS (
    (SELECT customer_id FROM ({_SEGMENT_MEMBERS.format(after=_AFTER)}) AS members
     ORDER BY customer_id OFFSET $4 - 1 LIMIT 1)
    UNION ALL
    SELECT (SELECT m.customer_id
            FROM ({_SEGMENT_MEMBERS.format(after="customer_id > e.customer_id")}) AS m
            ORDER BY m.customer_id OFFSET $4 - 1 LIMIT 1)
    FROM ends AS e WHERE e.customer_id IS NOT NULL
)
SELECT customer_id FROM ends WHERE customer_id IS NOT NULL
"""
_LISTED_ENDS = f"""
SELECT customer_id FROM (SELECT customer_id, row_number() OVER (ORDER BY customer_id) AS n
                         FROM ({_LISTED.format(after=_AFTER)}) AS members) AS numbered
WHERE n % $4 = 0
ORDER BY customer_id
"""


async def range_ends(conn: asyncpg.Connection, read: SignatureRead, after: str | None) -> list[str]:
    """Where the chunks of `read.limit` recipients after `after` end (`cut_ranges`), in id
    order, read from the target's ids alone."""
    ends = _SEGMENT_ENDS if read.target.segment is not None else _LISTED_ENDS
    _, key = _members(read.target)
    rows = await conn.fetch(ends, key, after, None, read.limit)
    return [row["customer_id"] for row in rows]


# The customers in the chunk's id range are counted (their contacts: the service hears of every
# customer through them) up to one more than twice the chunk's size (so that a full chunk too
# can be found sparse), so a sparse chunk costs no more to count than a dense one. Their
# set-ups, consents, do-not-contact entries and holds are at most one or a few a customer, so
# the customers' count says how many of those a range read takes too.
_DENSE = """
WITH span AS (SELECT min(customer_id) AS lo, max(customer_id) AS hi, count(*) AS recipients
              FROM ({members}) AS members)
SELECT (SELECT count(*) FROM (SELECT FROM customer_contacts AS c
                              WHERE c.customer_id BETWEEN lo AND hi LIMIT 2 * $4 + 1) AS t)
       <= 2 * recipients
FROM span
"""


async def is_dense(
    conn: asyncpg.Connection, read: SignatureRead, after: str | None, last: str | None
) -> bool:
    """Whether the id range of the chunk after `after` up to `last` holds at most twice as many
    customers as recipients: then reading their rows by range costs less than by id."""
    members, key = _members(read.target)
    dense: bool | None = await conn.fetchval(
        _DENSE.format(members=members), key, after, last, read.limit
    )
    return bool(dense)


@dataclass(frozen=True)
class SignatureGroup:
    """The recipients of a chunk that share a decision signature."""

    signature: str
    example: str
    """One of them (the least id), whose reach is read to decide for all."""
    recipients: int
    number: int
    """The signature's number in its chunk (a plan keeps it with each of its recipients)."""


@dataclass(frozen=True)
class SignatureChunk:
    """A chunk of recipients counted by decision signature."""

    groups: list[SignatureGroup]
    recipients: int


async def signature_groups(
    conn: asyncpg.Connection,
    read: SignatureRead,
    after: str | None,
    last: str | None,
    *,
    keep: bool = False,
    dense: bool = False,
) -> SignatureChunk:
    """The chunk of recipients after `after` up to `last` in customer id order (a plan's range),
    counted by decision signature: nothing is read per recipient. `keep` keeps the recipients in
    the session's `plan_recipients` for `add_plan_chunk` (a read-only transaction cannot).
    `dense`: read by the chunk's id range (`is_dense` says when that is cheaper); the same rows
    either way."""
    if keep:
        await conn.execute(_PLAN_RECIPIENTS)
        await conn.execute("TRUNCATE plan_recipients")
    shape = _KEPT_SIGNATURE_GROUPS if keep else _SIGNATURE_GROUPS
    rows = await _signed(conn, shape, read, after, last, dense)
    whole = next(row for row in rows if row["signature"] is None)
    groups = [
        SignatureGroup(row["signature"], row["example"], row["recipients"], row["number"])
        for row in rows
        if row["signature"] is not None
    ]
    return SignatureChunk(groups, whole["recipients"])


@dataclass(frozen=True)
class PlannedRows:
    """What a chunk's rows share: their campaign, and when and how fast it sends."""

    campaign_id: str
    purpose: str
    id_prefix: bytes
    """`campaigns.message_id_prefix` of the campaign."""
    at: datetime
    throttle: int | None
    """Messages a second at most: message n is not sent before `at` + n / throttle."""
    first: int
    """The rows the campaign's earlier chunks planned (the n of this chunk's first row)."""
    planned_at: datetime


# The chunk's messages, one per kept recipient whose signature was reached, kept as one
# plan_chunks row of arrays (`take_due_chunk` writes them out when the sender needs them): the
# address is their own at the channel's place in their set-up, else the registered one the
# channel falls back on (an empty one counts as none, as in `registered_addresses`); the
# throttle counts the messages in customer id order (their place in the chunk), in whole
# microseconds. The arrays are aligned, each message at the same index in all four, since every
# aggregate takes the same rows in the same order; no ORDER BY in them (each would sort the
# chunk apart), as nothing reads them in order: each message carries its own not-before.
_ADD_PLAN_CHUNK = """
WITH planned AS MATERIALIZED (
    SELECT r.customer_id, o.channel,
           coalesce(CASE WHEN o.position IS NOT NULL THEN
                        coalesce(r.addresses[o.position + 1],
                                 CASE o.registered WHEN 'email' THEN nullif(r.email, '')
                                                   WHEN 'phone' THEN nullif(r.phone, '') END)
                    END, '') AS address,
           row_number() OVER (ORDER BY r.place) - 1 AS n,
           o.not_before
    FROM plan_recipients AS r
    JOIN unnest($7::bigint[], $8::text[], $9::integer[], $10::text[], $11::timestamptz[])
        AS o(signature, channel, position, registered, not_before) USING (signature)
), throttled AS MATERIALIZED (
    SELECT customer_id, channel, address, n,
           CASE WHEN $5::bigint IS NULL THEN not_before
                ELSE greatest(not_before, $4::timestamptz + interval '1 microsecond'
                                          * ((n + $6::bigint) * 1000000 / $5::bigint))
           END AS not_before
    FROM planned
)
INSERT INTO plan_chunks (campaign_id, first, id_prefix, purpose, planned_at, due, messages,
                         customer_ids, channels, addresses, not_befores, by_channel)
SELECT $1, $6, $3, $2, $12, min(not_before), count(*),
       array_agg(customer_id), array_agg(channel), array_agg(address), array_agg(not_before),
       (SELECT jsonb_object_agg(channel, messages)
        FROM (SELECT channel, count(*) AS messages FROM planned GROUP BY channel) AS c)
FROM throttled
HAVING count(*) > 0
RETURNING messages
"""


async def add_plan_chunk(
    conn: asyncpg.Connection, rows: PlannedRows, reached: Sequence[Reached]
) -> int:
    """Keep the messages of each recipient the chunk kept (`signature_groups(keep=True)`) whose
    signature was reached, as one plan_chunks row; how many. The range's flag, committed with it
    (`lock_planning`), is what keeps a resumed plan from planning a recipient twice."""
    if not reached:
        return 0
    messages: int | None = await conn.fetchval(
        _ADD_PLAN_CHUNK,
        rows.campaign_id,
        rows.purpose,
        rows.id_prefix,
        rows.at,
        rows.throttle,
        rows.first,
        *columns(reached, "signature", "channel", "position", "registered", "not_before"),
        rows.planned_at,
    )
    return messages or 0


# The earliest due chunk, when fewer than $2 planned rows are due, deleted and written out as its
# outbound_messages rows in the caller's transaction (the claim's): each message's id is the UUID
# (version 8) of SHA-256 over the campaign's prefix and the customer id. No conflict clause: a
# chunk is deleted as it is written out and a campaign's chunks hold each recipient once, so no
# message is written twice (one that were would fail the claim, not be skipped unseen). The
# claim runs this every time: whether any chunk is due is asked first (an index probe), so the
# count of the due rows, which reads up to $2 of them, runs only when a chunk could be taken.
_TAKE_DUE_CHUNK = """
WITH taken AS (
    DELETE FROM plan_chunks
    WHERE (campaign_id, first) = (SELECT campaign_id, first FROM plan_chunks
                                  WHERE NOT cancelled AND due <= $1
                                    AND EXISTS (SELECT FROM plan_chunks
                                                WHERE NOT cancelled AND due <= $1)
                                    AND (SELECT count(*)
                                         FROM (SELECT FROM outbound_messages
                                               WHERE state = 'planned' AND not_before <= $1
                                                 AND (next_attempt_at IS NULL
                                                      OR next_attempt_at <= $1)
                                               LIMIT $2) AS ready) < $2
                                  ORDER BY due LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING *
)
INSERT INTO outbound_messages (message_id, campaign_id, customer_id, channel, address, purpose,
                               not_before, planned_at)
SELECT encode(set_byte(set_byte(d.h, 6, (get_byte(d.h, 6) & 15) | 128),
                       8, (get_byte(d.h, 8) & 63) | 128), 'hex')::uuid::text,
       t.campaign_id, m.customer_id, m.channel, m.address, t.purpose, m.not_before, t.planned_at
FROM taken AS t
CROSS JOIN LATERAL unnest(t.customer_ids, t.channels, t.addresses, t.not_befores)
    AS m(customer_id, channel, address, not_before)
CROSS JOIN LATERAL (
    -- OFFSET 0 keeps the hash a column computed once, not an expression repeated at each use
    SELECT substr(sha256(t.id_prefix || convert_to(m.customer_id, 'UTF8')), 1, 16) OFFSET 0
) AS d(h)
"""


async def take_due_chunk(conn: asyncpg.Connection, now: datetime, wanted: int) -> int:
    """Write out the planned chunk due first (its first message due at `now`) when fewer than
    `wanted` planned messages are due, unless another sender holds it; how many messages it
    wrote (0: none due, or enough due already)."""
    status = await conn.execute(_TAKE_DUE_CHUNK, now, wanted)
    return int(status.rsplit(" ", 1)[1])


async def record_plan_chunk(
    conn: asyncpg.Connection,
    campaign_id: str,
    messages: int,
    seconds: float,
    reasons: Mapping[str, int],
    planned_reasons: Collection[str],
) -> bool:
    """Add a chunk's rows, time and reasons to its campaign; whether every range of the campaign
    is planned now (in the caller's transaction, under `lock_planning`)."""
    await conn.execute(
        "UPDATE campaigns SET plan_messages = plan_messages + $2,"
        " plan_seconds = coalesce(plan_seconds, 0) + $3 WHERE campaign_id = $1",
        campaign_id,
        messages,
        seconds,
    )
    await conn.execute(
        """
        INSERT INTO campaign_reasons AS c (campaign_id, reason, planned, recipients)
        SELECT $1, * FROM unnest($2::text[], $3::boolean[], $4::bigint[])
        ON CONFLICT (campaign_id, reason) DO UPDATE
        SET recipients = c.recipients + EXCLUDED.recipients
        """,
        campaign_id,
        list(reasons),
        [reason in planned_reasons for reason in reasons],
        list(reasons.values()),
    )
    complete: bool = await conn.fetchval(
        "SELECT NOT EXISTS (SELECT FROM plan_ranges WHERE campaign_id = $1 AND NOT planned)",
        campaign_id,
    )
    return complete


async def finish_plan(conn: asyncpg.Connection, campaign_id: str, planned_at: datetime) -> float:
    """Mark the campaign planned at its decision instant; the seconds its chunks took."""
    seconds: float = await conn.fetchval(
        "UPDATE campaigns SET state = 'planned', planned_at = $2,"
        " plan_seconds = coalesce(plan_seconds, 0) WHERE campaign_id = $1 RETURNING plan_seconds",
        campaign_id,
        planned_at,
    )
    return seconds


async def add_messages(conn: asyncpg.Connection, messages: Sequence[PlannedMessage]) -> int:
    """Insert the planned messages; one already planned (same id) is left as it is. How many
    were new."""
    if not messages:
        return 0
    status = await conn.execute(
        """
        INSERT INTO outbound_messages (message_id, campaign_id, customer_id, channel, address,
                                       purpose, subject, body_text, body_html, not_before,
                                       planned_at)
        SELECT *, now() FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                    $6::text[], $7::text[], $8::text[], $9::text[],
                                    $10::timestamptz[])
        ON CONFLICT (message_id) DO NOTHING
        """,
        *columns(
            messages,
            "message_id",
            "campaign_id",
            "customer_id",
            "channel",
            "address",
            "purpose",
            "subject",
            "body_text",
            "body_html",
            "not_before",
        ),
    )
    return int(status.rsplit(" ", 1)[1])


async def cancel_messages(conn: asyncpg.Connection, campaign_id: str) -> int:
    """Cancel the campaign's messages the sender has not claimed yet; how many. Its chunks not
    written out yet are marked first (waiting for a sender that is writing one out), then the
    rows, so a chunk written out meanwhile has its rows cancelled too."""
    chunks = await conn.fetchval(
        "WITH marked AS (UPDATE plan_chunks SET cancelled = true"
        " WHERE campaign_id = $1 AND NOT cancelled RETURNING messages)"
        " SELECT coalesce(sum(messages), 0) FROM marked",
        campaign_id,
    )
    status = await conn.execute(
        "UPDATE outbound_messages SET state = 'cancelled'"
        " WHERE campaign_id = $1 AND state = 'planned'",
        campaign_id,
    )
    return int(chunks) + int(status.rsplit(" ", 1)[1])


async def save_recommendations(
    conn: asyncpg.Connection, lists: Collection[CustomerProducts]
) -> None:
    """Keep each customer's newest list; the guard repeats the rule (higher version wins)."""
    if not lists:
        return
    await conn.execute(
        """
        INSERT INTO customer_recommendations AS r (customer_id, picks, new_products, version,
                                                   changed_at)
        SELECT customer_id, picks::jsonb, new_products::jsonb, version, changed_at
        FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[])
            AS t(customer_id, picks, new_products, version, changed_at)
        ON CONFLICT (customer_id) DO UPDATE SET
            picks = EXCLUDED.picks, new_products = EXCLUDED.new_products,
            version = EXCLUDED.version, changed_at = EXCLUDED.changed_at
        WHERE r.version < EXCLUDED.version
        """,
        *columns(lists, "customer_id", "picks_json", "new_products_json", "version", "changed_at"),
    )


_CONTACT_FIELDS = ("customer_id", "name", "email", "phone", "changed_at")
_CONTACT_ROWS = UnnestColumns.named(_CONTACT_FIELDS, changed_at="timestamptz")


async def save_contacts(conn: asyncpg.Connection, contacts: Collection[CustomerContact]) -> None:
    """Names and addresses: a newer event's fields replace the stored ones, absent ones stay."""
    if not contacts:
        return
    await conn.execute(
        f"""
        INSERT INTO customer_contacts AS k ({_CONTACT_ROWS.names}) {_CONTACT_ROWS.select}
        ON CONFLICT (customer_id) DO UPDATE SET
            name = COALESCE(EXCLUDED.name, k.name), email = COALESCE(EXCLUDED.email, k.email),
            phone = COALESCE(EXCLUDED.phone, k.phone), changed_at = EXCLUDED.changed_at
        WHERE k.changed_at <= EXCLUDED.changed_at
        """,
        *_CONTACT_ROWS.arguments(columns(contacts, *_CONTACT_FIELDS)),
    )


async def campaign_rows(
    conn: asyncpg.Connection, campaign_id: str | None, limit: int
) -> list[Mapping[str, Any]]:
    """Campaigns (one, or the newest `limit`) with their reasons and their messages counted by
    channel and state (those of chunks not written out yet as planned, or cancelled)."""
    return list(
        await conn.fetch(
            """
            SELECT c.*,
                   ARRAY(SELECT ROW(r.reason, r.planned, r.recipients) FROM campaign_reasons AS r
                         WHERE r.campaign_id = c.campaign_id ORDER BY r.recipients DESC, r.reason)
                       AS reasons,
                   ARRAY(SELECT ROW(p.channel, p.state, sum(p.messages)::bigint)
                         FROM (SELECT m.channel, m.state, count(*) AS messages
                               FROM outbound_messages AS m WHERE m.campaign_id = c.campaign_id
                               GROUP BY m.channel, m.state
                               UNION ALL
                               SELECT b.key, CASE WHEN k.cancelled THEN 'cancelled'
                                                  ELSE 'planned' END, b.value::bigint
                               FROM plan_chunks AS k, jsonb_each_text(k.by_channel) AS b
                               WHERE k.campaign_id = c.campaign_id) AS p
                         GROUP BY p.channel, p.state ORDER BY p.channel, p.state) AS progress
            FROM campaigns AS c
            WHERE $1::text IS NULL OR c.campaign_id = $1
            ORDER BY c.defined_at DESC, c.campaign_id
            LIMIT $2
            """,
            campaign_id,
            limit,
        )
    )


# ----------------------------------------------------------------------------- sending

_OUTBOUND_FIELDS = (
    "message_id, campaign_id, customer_id, channel, address, purpose, subject,"
    " coalesce(body_text, '') AS body_text, body_html, attempts"
)
"""A campaign's row has no content until the claim renders it (rendering.render_claimed)."""
_OUTBOUND_NAMES = tuple(name for name in OutboundMessage.__slots__ if name != "campaign_cancelled")


def _outbound(row: Mapping[str, Any], campaign_cancelled: bool = False) -> OutboundMessage:
    return OutboundMessage(
        **{name: row[name] for name in _OUTBOUND_NAMES}, campaign_cancelled=campaign_cancelled
    )


async def claim_due(conn: asyncpg.Connection, now: datetime, limit: int) -> list[OutboundMessage]:
    """Lock up to `limit` planned messages whose time has come. Rows another sender holds are
    skipped, not waited for. Claims whose lease ended are resolved by `take_expired_claims` first.
    Each says whether its campaign was cancelled since (the sender's re-check then stops it):
    only the claim reads it, as a message is sent only after a claim.
    """
    rows = await conn.fetch(
        f"""
        SELECT {_OUTBOUND_FIELDS},
               EXISTS (SELECT FROM campaigns AS c
                       WHERE c.campaign_id = outbound_messages.campaign_id
                         AND c.state = 'cancelled') AS campaign_cancelled
        FROM outbound_messages
        WHERE state = 'planned' AND not_before <= $1
          AND (next_attempt_at IS NULL OR next_attempt_at <= $1)
        ORDER BY not_before
        LIMIT $2
        FOR UPDATE SKIP LOCKED
        """,
        now,
        limit,
    )
    return [_outbound(row, row["campaign_cancelled"]) for row in rows]


async def hold_claims(
    conn: asyncpg.Connection, message_ids: Collection[str], sender: str, lease_until: datetime
) -> None:
    """The claim, committed before any adapter is called: the messages are `sender`'s until
    `lease_until`, not started yet (nothing is on the wire, so a crash now loses nothing)."""
    await conn.execute(
        "UPDATE outbound_messages SET state = 'sending', claimed_by = $2, started_at = NULL,"
        " next_attempt_at = $3 WHERE message_id = ANY($1::text[])",
        list(message_ids),
        sender,
        lease_until,
    )


async def mark_started(
    conn: asyncpg.Connection,
    message_ids: Collection[str],
    sender: str,
    at: datetime,
    lease_until: datetime,
) -> set[str]:
    """The start marks, committed just before the adapter calls: the attempt is counted and the
    lease renewed. Returns the messages marked; one `sender` no longer holds (its lease ended and
    another sender took it over) is not, and must not be sent."""
    rows = await conn.fetch(
        "UPDATE outbound_messages SET started_at = $3, attempts = attempts + 1,"
        " next_attempt_at = $4 WHERE message_id = ANY($1::text[]) AND state = 'sending'"
        " AND claimed_by = $2 AND started_at IS NULL RETURNING message_id",
        list(message_ids),
        sender,
        at,
        lease_until,
    )
    return {row["message_id"] for row in rows}


async def take_expired_claims(
    conn: asyncpg.Connection, now: datetime, sender: str, limit: int
) -> list[tuple[OutboundMessage, bool]]:
    """Take over up to `limit` claims whose lease ended (their sender died or stalled), each with
    whether it was started: `sender` holds them until this transaction decides their fate."""
    rows = await conn.fetch(
        f"""
        UPDATE outbound_messages SET claimed_by = $2
        WHERE message_id IN (
            SELECT message_id FROM outbound_messages
            WHERE state = 'sending' AND next_attempt_at <= $1
            ORDER BY next_attempt_at
            LIMIT $3
            FOR UPDATE SKIP LOCKED
        )
        RETURNING {_OUTBOUND_FIELDS}, started_at IS NOT NULL AS started
        """,
        now,
        sender,
        limit,
    )
    return [(_outbound(row), row["started"]) for row in rows]


async def plan_again(conn: asyncpg.Connection, message_ids: Collection[str]) -> None:
    """Expired claims that may be sent (again): planned and due at once."""
    await conn.execute(
        "UPDATE outbound_messages SET state = 'planned', next_attempt_at = NULL, claimed_by = NULL"
        " WHERE message_id = ANY($1::text[])",
        list(message_ids),
    )


async def release_unstarted(conn: asyncpg.Connection, sender: str) -> None:
    """A stopping sender's claims it did not start: planned again at once, not after the lease."""
    await conn.execute(
        "UPDATE outbound_messages SET state = 'planned', next_attempt_at = NULL, claimed_by = NULL"
        " WHERE claimed_by = $1 AND state = 'sending' AND started_at IS NULL",
        sender,
    )


async def hold_back(
    conn: asyncpg.Connection,
    message_ids: Sequence[str],
    states: Sequence[str],
    next_attempts: Sequence[datetime | None],
    reasons: Sequence[str],
) -> None:
    """Messages the re-check refused: cancelled, or planned again for after the quiet hours."""
    await conn.execute(
        """
        UPDATE outbound_messages AS m
        SET state = r.state, next_attempt_at = r.next_attempt_at, last_error = r.reason
        FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[])
             AS r(message_id, state, next_attempt_at, reason)
        WHERE m.message_id = r.message_id
        """,
        list(message_ids),
        list(states),
        list(next_attempts),
        list(reasons),
    )


async def finish_attempts(
    conn: asyncpg.Connection,
    message_ids: Sequence[str],
    states: Sequence[str],
    next_attempts: Sequence[datetime | None],
    errors: Sequence[str | None],
    references: Sequence[str | None],
    at: datetime,
    sender: str,
) -> set[str]:
    """Record what the adapters answered; returns the messages recorded. A message `sender` no
    longer holds (its lease ended and another sender took it) is left to that sender."""
    rows = await conn.fetch(
        """
        UPDATE outbound_messages AS m
        SET state = r.state, next_attempt_at = r.next_attempt_at, last_error = r.error,
            provider_reference = coalesce(r.reference, m.provider_reference),
            sent_at = CASE WHEN r.state = 'sent' THEN $6::timestamptz END
        FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[])
             AS r(message_id, state, next_attempt_at, error, reference)
        WHERE m.message_id = r.message_id AND m.state = 'sending' AND m.claimed_by = $7
        RETURNING m.message_id
        """,
        list(message_ids),
        list(states),
        list(next_attempts),
        list(errors),
        list(references),
        at,
        sender,
    )
    return {row["message_id"] for row in rows}


async def add_outcomes(
    conn: asyncpg.Connection,
    messages: Sequence[OutboundMessage],
    outcomes: Sequence[str],
    reasons: Sequence[str | None],
    at: datetime,
) -> list[int]:
    """Record outcomes once each; returns the positions of those recorded now (not before), and
    counts them in the campaign results in the same statement, in this session's shard (so
    several senders' commits do not wait for each other's on one row)."""
    rows = await conn.fetch(
        """
        WITH given AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                 WITH ORDINALITY AS r(message_id, outcome, reason, campaign_id, channel, position)
        ), added AS (
            INSERT INTO message_outcomes (message_id, outcome, reason, recorded_at)
            SELECT message_id, outcome, reason, $6 FROM given
            ON CONFLICT DO NOTHING
            RETURNING message_id, outcome
        ), counted AS (
            INSERT INTO campaign_results AS c (campaign_id, channel, outcome, shard, messages)
            SELECT g.campaign_id, g.channel, g.outcome, pg_backend_pid() % 16, count(*)
            FROM given AS g JOIN added USING (message_id, outcome)
            WHERE g.campaign_id IS NOT NULL
            GROUP BY g.campaign_id, g.channel, g.outcome
            ON CONFLICT (campaign_id, channel, outcome, shard)
            DO UPDATE SET messages = c.messages + EXCLUDED.messages
        )
        SELECT g.position FROM given AS g JOIN added USING (message_id, outcome)
        """,
        [m.message_id for m in messages],
        list(outcomes),
        list(reasons),
        [m.campaign_id for m in messages],
        [m.channel for m in messages],
        at,
    )
    return sorted(int(row["position"]) - 1 for row in rows)


async def outbound_message(conn: asyncpg.Connection, message_id: str) -> OutboundMessage | None:
    row = await conn.fetchrow(
        f"SELECT {_OUTBOUND_FIELDS} FROM outbound_messages WHERE message_id = $1", message_id
    )
    return None if row is None else _outbound(row)


async def due_messages(conn: asyncpg.Connection, now: datetime) -> int:
    """How many planned messages wait to be sent now: the sender's queue depth (a due chunk not
    written out yet counts whole)."""
    count: int = await conn.fetchval(
        "SELECT (SELECT count(*) FROM outbound_messages WHERE state = 'planned'"
        " AND not_before <= $1 AND (next_attempt_at IS NULL OR next_attempt_at <= $1))"
        " + (SELECT coalesce(sum(messages), 0) FROM plan_chunks WHERE NOT cancelled"
        " AND due <= $1)::bigint",
        now,
    )
    return count


async def campaign_results(conn: asyncpg.Connection, campaign_id: str) -> dict[str, dict[str, int]]:
    """A campaign's messages by channel and outcome (sent, delivered, opened, clicked, bounced,
    failed, cancelled, ...)."""
    rows = await conn.fetch(
        "SELECT channel, outcome, sum(messages)::bigint AS messages FROM campaign_results"
        " WHERE campaign_id = $1 GROUP BY channel, outcome",
        campaign_id,
    )
    results: dict[str, dict[str, int]] = {}
    for row in rows:
        results.setdefault(row["channel"], {})[row["outcome"]] = row["messages"]
    return results


# ----------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Unrendered:
    """A claimed campaign message without content yet, with what personalises it."""

    message_id: str
    campaign_id: str
    channel: str
    addressee: Addressee


async def unrendered(
    conn: asyncpg.Connection, message_ids: Collection[str]
) -> tuple[list[Unrendered], dict[str, Campaign]]:
    """Which of these messages are not rendered yet, with their recipients' current names and
    recommendations (when their campaign includes them), and the campaigns they come from."""
    rows = await conn.fetch(
        """
        SELECT m.message_id, m.campaign_id, m.customer_id, m.channel, k.name,
               CASE WHEN (c.definition->>'include_recommendations')::boolean
                    THEN r.picks END AS picks,
               CASE WHEN (c.definition->>'include_recommendations')::boolean
                    THEN r.new_products END AS new_products
        FROM outbound_messages AS m
        JOIN campaigns AS c ON c.campaign_id = m.campaign_id
        LEFT JOIN customer_contacts AS k ON k.customer_id = m.customer_id
        LEFT JOIN customer_recommendations AS r ON r.customer_id = m.customer_id
        WHERE m.message_id = ANY($1::text[]) AND m.body_text IS NULL
        """,
        list(message_ids),
    )
    if not rows:
        return [], {}
    found = [
        Unrendered(
            row["message_id"],
            row["campaign_id"],
            row["channel"],
            Addressee(
                row["customer_id"],
                row["name"],
                _products(row["picks"]),
                _products(row["new_products"]),
            ),
        )
        for row in rows
    ]
    campaign_rows = await conn.fetch(
        "SELECT * FROM campaigns WHERE campaign_id = ANY($1::text[])",
        list({u.campaign_id for u in found}),
    )
    return found, {row["campaign_id"]: _campaign(row) for row in campaign_rows}


def _products(items: list[dict[str, Any]] | None) -> tuple[Product, ...]:
    return tuple(Product(**item) for item in items or ())


async def save_rendered(
    conn: asyncpg.Connection,
    message_ids: Sequence[str],
    subjects: Sequence[str | None],
    texts: Sequence[str],
    htmls: Sequence[str | None],
) -> None:
    """Keep what the claim rendered: an attempt after a crash or a retry sends the same."""
    await conn.execute(
        """
        UPDATE outbound_messages AS m
        SET subject = r.subject, body_text = r.body_text, body_html = r.body_html
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
             AS r(message_id, subject, body_text, body_html)
        WHERE m.message_id = r.message_id
        """,
        list(message_ids),
        list(subjects),
        list(texts),
        list(htmls),
    )
