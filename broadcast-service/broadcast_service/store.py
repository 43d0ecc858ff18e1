"""All SQL of the broadcast service. The caller owns the transaction."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import datetime, time
from typing import Any

import asyncpg

from broadcast_service.decision import CustomerReach, reach_of
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
from crm_shared.runtime.db import columns

# The order of each state's `version`, in SQL, for the WHERE that keeps a newer stored row: text
# compared by code point (COLLATE "C") as Python compares it.
_PREFERENCE_VERSION = '({t}.set_at, {t}.source COLLATE "C", {t}.event_id COLLATE "C")'
_CONSENT_VERSION = (
    "({t}.changed_at, CASE {t}.state WHEN 'granted' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END,"
    ' {t}.source COLLATE "C", {t}.event_id COLLATE "C")'
)
_LISTED_VERSION = '({t}.changed_at, {t}.{flag}, {t}.source COLLATE "C", {t}.event_id COLLATE "C")'


def _setup(item: Mapping[str, Any]) -> ChannelSetup:
    start = item.get("quiet_start")
    paused = item.get("paused_until")
    return ChannelSetup(
        channel=item["channel"],
        address=item.get("address"),
        quiet_hours=None
        if start is None
        else QuietWindow(
            time.fromisoformat(start), time.fromisoformat(item["quiet_end"]), item["quiet_timezone"]
        ),
        max_per_day=item.get("max_per_day"),
        max_per_week=item.get("max_per_week"),
        paused_until=None if paused is None else datetime.fromisoformat(paused),
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


async def save_consents(conn: asyncpg.Connection, consents: Collection[Consent]) -> None:
    """Write the consent states; a stored state that the pure rule ranks higher is kept, so a
    grant never overwrites a refusal of the same instant, whatever batch it came in."""
    if not consents:
        return
    await conn.execute(
        f"""
        INSERT INTO consents AS c (customer_id, purpose, channel, granted, state, capture_method,
                                   wording_version, evidence, changed_at, source, event_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::text[],
                             $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::text[],
                             $11::text[])
        ON CONFLICT (customer_id, purpose, channel) DO UPDATE SET
            granted = EXCLUDED.granted, state = EXCLUDED.state,
            capture_method = EXCLUDED.capture_method,
            wording_version = EXCLUDED.wording_version, evidence = EXCLUDED.evidence,
            changed_at = EXCLUDED.changed_at, source = EXCLUDED.source,
            event_id = EXCLUDED.event_id
        WHERE {_CONSENT_VERSION.format(t="c")} < {_CONSENT_VERSION.format(t="EXCLUDED")}
        """,
        *columns(consents, *_CONSENT_FIELDS),
    )


async def add_history(conn: asyncpg.Connection, changes: Collection[Consent]) -> None:
    """Append consent events to the history; one already there (same source and id) is kept."""
    if not changes:
        return
    await conn.execute(
        """
        INSERT INTO consent_history (customer_id, purpose, channel, granted, state,
                                     capture_method, wording_version, evidence, occurred_at,
                                     source, event_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::text[],
                             $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::text[],
                             $11::text[])
        ON CONFLICT (source, event_id) DO NOTHING
        """,
        *columns(changes, *_CONSENT_FIELDS),
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


async def reaches_of(
    conn: asyncpg.Connection, customer_ids: Collection[str]
) -> dict[str, CustomerReach]:
    """Everything the contact decision reads about these customers, one query per table for
    the whole batch (the planner and the sender call it per batch, never per customer). Every
    customer asked for has an entry; one the service knows nothing of has no set-up."""
    ids = list(customer_ids)
    preferences = await conn.fetch(
        "SELECT * FROM channel_preferences WHERE customer_id = ANY($1::text[])", ids
    )
    consents = await conn.fetch("SELECT * FROM consents WHERE customer_id = ANY($1::text[])", ids)
    listed = await conn.fetch(
        "SELECT * FROM do_not_contact WHERE customer_id = ANY($1::text[]) AND listed", ids
    )
    complaints = await conn.fetch(
        "SELECT * FROM complaint_holds WHERE customer_id = ANY($1::text[]) AND open", ids
    )
    detractors = await conn.fetch(
        "SELECT * FROM detractor_holds WHERE customer_id = ANY($1::text[])", ids
    )
    setups = {row["customer_id"]: _preferences(row) for row in preferences}
    by_customer: dict[str, tuple[list[Any], list[Any], list[Any]]] = {i: ([], [], []) for i in ids}
    for row in consents:
        by_customer[row["customer_id"]][0].append(_consent(row))
    for row in listed:
        by_customer[row["customer_id"]][1].append(_do_not_contact(row))
    for row in complaints:
        by_customer[row["customer_id"]][2].append(_complaint(row))
    scores = {row["customer_id"]: _detractor(row) for row in detractors}
    return {
        customer_id: reach_of(setups.get(customer_id), *found, detractor=scores.get(customer_id))
        for customer_id, found in by_customer.items()
    }


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
