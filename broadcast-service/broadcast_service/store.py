"""All SQL of the broadcast service. The caller owns the transaction."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from broadcast_service.delivery import OutboundMessage
from broadcast_service.projection import (
    ChannelPreferences,
    Consent,
    ConsentKey,
    QuietWindow,
    RecentSend,
    SegmentMembership,
)
from crm_shared.runtime.db import columns

# The order of `ChannelPreferences.version` and `Consent.version`, in SQL, for the WHERE that
# keeps a newer stored row: text compared by code point (COLLATE "C") as Python compares it.
_PREFERENCE_VERSION = '({t}.set_at, {t}.source COLLATE "C", {t}.event_id COLLATE "C")'
_CONSENT_VERSION = (
    '({t}.changed_at, NOT {t}.granted, {t}.source COLLATE "C", {t}.event_id COLLATE "C")'
)


def _preferences(row: Mapping[str, Any]) -> ChannelPreferences:
    quiet = (
        None
        if row["quiet_start"] is None
        else QuietWindow(row["quiet_start"], row["quiet_end"], row["quiet_timezone"])
    )
    return ChannelPreferences(
        customer_id=row["customer_id"],
        channels=tuple(row["channels"]),
        quiet_hours=quiet,
        set_at=row["set_at"],
        source=row["source"],
        event_id=row["event_id"],
    )


def _consent(row: Mapping[str, Any]) -> Consent:
    return Consent(
        customer_id=row["customer_id"],
        purpose=row["purpose"],
        channel=row["channel"],
        granted=row["granted"],
        changed_at=row["changed_at"],
        source=row["source"],
        event_id=row["event_id"],
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
    # comma-separated text: unnest cannot take an array of arrays of different lengths.
    await conn.execute(
        f"""
        INSERT INTO channel_preferences AS p (customer_id, channels, quiet_start, quiet_end,
                                              quiet_timezone, set_at, source, event_id)
        SELECT customer_id, string_to_array(channels, ','), quiet_start, quiet_end,
               quiet_timezone, set_at, source, event_id
        FROM unnest($1::text[], $2::text[], $3::time[], $4::time[], $5::text[],
                    $6::timestamptz[], $7::text[], $8::text[])
             AS r(customer_id, channels, quiet_start, quiet_end, quiet_timezone, set_at, source,
                  event_id)
        ON CONFLICT (customer_id) DO UPDATE SET
            channels = EXCLUDED.channels, quiet_start = EXCLUDED.quiet_start,
            quiet_end = EXCLUDED.quiet_end, quiet_timezone = EXCLUDED.quiet_timezone,
            set_at = EXCLUDED.set_at, source = EXCLUDED.source, event_id = EXCLUDED.event_id
        WHERE {_PREFERENCE_VERSION.format(t="p")} < {_PREFERENCE_VERSION.format(t="EXCLUDED")}
        """,
        *(list(column) for column in zip(*map(_preference_row, records), strict=True)),
    )


def _preference_row(r: ChannelPreferences) -> tuple[Any, ...]:
    quiet = r.quiet_hours
    start, end, timezone = (
        (None, None, None) if quiet is None else (quiet.start, quiet.end, quiet.timezone)
    )
    return (
        r.customer_id,
        ",".join(r.channels),
        start,
        end,
        timezone,
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


async def save_consents(conn: asyncpg.Connection, consents: Collection[Consent]) -> None:
    """Write the consent states; a stored state that the pure rule ranks higher is kept, so a
    grant never overwrites a revocation of the same instant, whatever batch it came in."""
    if not consents:
        return
    await conn.execute(
        f"""
        INSERT INTO consents AS c (customer_id, purpose, channel, granted, changed_at,
                                   source, event_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[],
                             $5::timestamptz[], $6::text[], $7::text[])
        ON CONFLICT (customer_id, purpose, channel) DO UPDATE SET
            granted = EXCLUDED.granted, changed_at = EXCLUDED.changed_at,
            source = EXCLUDED.source, event_id = EXCLUDED.event_id
        WHERE {_CONSENT_VERSION.format(t="c")} < {_CONSENT_VERSION.format(t="EXCLUDED")}
        """,
        *columns(
            consents,
            "customer_id",
            "purpose",
            "channel",
            "granted",
            "changed_at",
            "source",
            "event_id",
        ),
    )


async def add_history(conn: asyncpg.Connection, changes: Collection[Consent]) -> None:
    """Append consent events to the history; one already there (same source and id) is kept."""
    if not changes:
        return
    await conn.execute(
        """
        INSERT INTO consent_history (source, event_id, customer_id, purpose, channel, granted,
                                     occurred_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::boolean[], $7::timestamptz[])
        ON CONFLICT (source, event_id) DO NOTHING
        """,
        *columns(
            changes,
            "source",
            "event_id",
            "customer_id",
            "purpose",
            "channel",
            "granted",
            "changed_at",
        ),
    )


_PREFERENCES_AND_CONSENTS = """
SELECT p.*,
       ARRAY(SELECT ROW(c.purpose, c.channel, c.granted, c.changed_at, c.source, c.event_id)
             FROM consents AS c WHERE c.customer_id = $1
             ORDER BY c.purpose, c.channel COLLATE "C") AS consents
FROM (SELECT $1::text AS customer_id) AS asked
LEFT JOIN channel_preferences AS p ON p.customer_id = asked.customer_id
"""


async def preferences_and_consents(
    conn: asyncpg.Connection, customer_id: str
) -> tuple[ChannelPreferences | None, list[Consent]]:
    """The customer's preferences (None when never set) and current consents, by purpose and then
    channel ('*' first): one statement, as a read of a customer's reach is on the 360's path."""
    row = await conn.fetchrow(_PREFERENCES_AND_CONSENTS, customer_id)
    preferences = None if row["customer_id"] is None else _preferences(row)
    consents = [
        Consent(
            customer_id=customer_id,
            purpose=purpose,
            channel=channel,
            granted=granted,
            changed_at=changed_at,
            source=source,
            event_id=event_id,
        )
        for purpose, channel, granted, changed_at, source, event_id in row["consents"]
    ]
    return preferences, consents


async def history_of(conn: asyncpg.Connection, customer_id: str, limit: int) -> list[Consent]:
    """The customer's consent events, newest first."""
    rows = await conn.fetch(
        """
        SELECT customer_id, purpose, channel, granted, occurred_at AS changed_at, source, event_id
        FROM consent_history WHERE customer_id = $1
        ORDER BY occurred_at DESC, source, event_id
        LIMIT $2
        """,
        customer_id,
        limit,
    )
    return [_consent(row) for row in rows]


async def is_known(conn: asyncpg.Connection, customer_id: str) -> bool:
    """Whether the service holds any preference or consent of the customer."""
    known: bool = await conn.fetchval(
        """
        SELECT EXISTS (SELECT 1 FROM channel_preferences WHERE customer_id = $1)
            OR EXISTS (SELECT 1 FROM consents WHERE customer_id = $1)
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


# ----------------------------------------------------------------------------- sending

_OUTBOUND_FIELDS = (
    "message_id, campaign_id, customer_id, channel, address, purpose, subject, body_text,"
    " body_html, attempts"
)


def _outbound(row: Mapping[str, Any]) -> OutboundMessage:
    return OutboundMessage(**{name: row[name] for name in OutboundMessage.__slots__})


async def add_planned(
    conn: asyncpg.Connection, messages: Collection[OutboundMessage], not_before: datetime
) -> None:
    """Plan messages to send from `not_before` (a plan already there is kept as it is)."""
    await conn.execute(
        """
        INSERT INTO outbound_messages (message_id, campaign_id, customer_id, channel, address,
                                       purpose, subject, body_text, body_html, not_before,
                                       planned_at)
        SELECT r.*, $10, $10 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                         $5::text[], $6::text[], $7::text[], $8::text[],
                                         $9::text[]) AS r
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
        ),
        not_before,
    )


async def claim_due(conn: asyncpg.Connection, now: datetime, limit: int) -> list[OutboundMessage]:
    """Lock up to `limit` messages due now: planned ones whose time has come, and 'sending' ones
    whose lease ended (their sender died). Rows another sender holds are skipped, not waited for.
    """
    rows = await conn.fetch(
        f"""
        SELECT {_OUTBOUND_FIELDS} FROM outbound_messages
        WHERE (state = 'planned' AND not_before <= $1
               AND (next_attempt_at IS NULL OR next_attempt_at <= $1))
           OR (state = 'sending' AND next_attempt_at <= $1)
        ORDER BY not_before
        LIMIT $2
        FOR UPDATE SKIP LOCKED
        """,
        now,
        limit,
    )
    return [_outbound(row) for row in rows]


async def preferences_and_consents_of(
    conn: asyncpg.Connection, customer_ids: Collection[str]
) -> tuple[dict[str, ChannelPreferences], dict[str, list[Consent]]]:
    """The current preferences and consents of many customers: two statements for a batch."""
    ids = list(customer_ids)
    preference_rows = await conn.fetch(
        "SELECT * FROM channel_preferences WHERE customer_id = ANY($1::text[])", ids
    )
    consent_rows = await conn.fetch(
        "SELECT * FROM consents WHERE customer_id = ANY($1::text[])", ids
    )
    consents: dict[str, list[Consent]] = {}
    for row in consent_rows:
        consents.setdefault(row["customer_id"], []).append(_consent(row))
    return {row["customer_id"]: _preferences(row) for row in preference_rows}, consents


async def start_sending(
    conn: asyncpg.Connection, message_ids: Collection[str], lease_until: datetime
) -> None:
    """The ledger's first step, committed before any adapter is called: the attempt is counted,
    and the message is this sender's until `lease_until`."""
    await conn.execute(
        "UPDATE outbound_messages SET state = 'sending', attempts = attempts + 1,"
        " next_attempt_at = $2 WHERE message_id = ANY($1::text[])",
        list(message_ids),
        lease_until,
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
) -> set[str]:
    """Record what the adapters answered; returns the messages recorded. A message no longer
    'sending' (its lease ended and another sender took it) is left to that sender."""
    rows = await conn.fetch(
        """
        UPDATE outbound_messages AS m
        SET state = r.state, next_attempt_at = r.next_attempt_at, last_error = r.error,
            provider_reference = coalesce(r.reference, m.provider_reference),
            sent_at = CASE WHEN r.state = 'sent' THEN $6::timestamptz END
        FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[])
             AS r(message_id, state, next_attempt_at, error, reference)
        WHERE m.message_id = r.message_id AND m.state = 'sending'
        RETURNING m.message_id
        """,
        list(message_ids),
        list(states),
        list(next_attempts),
        list(errors),
        list(references),
        at,
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
    counts them in the campaign results in the same statement."""
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
            INSERT INTO campaign_results AS c (campaign_id, channel, outcome, messages)
            SELECT g.campaign_id, g.channel, g.outcome, count(*)
            FROM given AS g JOIN added USING (message_id, outcome)
            WHERE g.campaign_id IS NOT NULL
            GROUP BY g.campaign_id, g.channel, g.outcome
            ON CONFLICT (campaign_id, channel, outcome)
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
    """How many planned messages wait to be sent now: the sender's queue depth."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM outbound_messages WHERE state = 'planned' AND not_before <= $1"
        " AND (next_attempt_at IS NULL OR next_attempt_at <= $1)",
        now,
    )
    return count


async def campaign_results(conn: asyncpg.Connection, campaign_id: str) -> dict[str, dict[str, int]]:
    """A campaign's messages by channel and outcome (sent, delivered, opened, clicked, bounced,
    failed, cancelled, ...)."""
    rows = await conn.fetch(
        "SELECT channel, outcome, messages FROM campaign_results WHERE campaign_id = $1",
        campaign_id,
    )
    results: dict[str, dict[str, int]] = {}
    for row in rows:
        results.setdefault(row["channel"], {})[row["outcome"]] = row["messages"]
    return results
