"""All SQL of the interaction service. The caller owns the transaction."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import fields
from typing import Any

import asyncpg

from interaction_service.projection import (
    ContactTotals,
    EventKey,
    TimelineEntry,
    TimelinePosition,
)

_TOTALS_COLUMNS = tuple(f.name for f in fields(ContactTotals))


async def add_to_timeline(
    conn: asyncpg.Connection, entries: Sequence[TimelineEntry]
) -> set[EventKey]:
    """Insert the entries; return the keys of those not already in a timeline."""
    if not entries:
        return set()
    rows = await conn.fetch(
        """
        INSERT INTO timeline (source, event_id, customer_id, occurred_at, kind, event_type,
                              channel, summary, details)
        SELECT source, event_id, customer_id, occurred_at, kind, event_type, channel, summary,
               details::jsonb
        FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                    $6::text[], $7::text[], $8::text[], $9::text[])
             AS e(source, event_id, customer_id, occurred_at, kind, event_type, channel,
                  summary, details)
        ON CONFLICT (source, event_id) DO NOTHING
        RETURNING source, event_id
        """,
        # The arrays are the entries' fields, in TimelineEntry's order.
        *(list(column) for column in zip(*entries, strict=True)),
    )
    return {(row["source"], row["event_id"]) for row in rows}


async def add_to_summaries(conn: asyncpg.Connection, deltas: Mapping[str, ContactTotals]) -> None:
    """Add each delta to its customer's summary: sums add up, times widen."""
    if not deltas:
        return
    ids = sorted(deltas)  # one lock order for every batch
    values = [deltas[i] for i in ids]
    await conn.execute(
        """
        INSERT INTO contact_summary AS s (customer_id, touchpoints, contacts, inbound, outbound,
                                          refusals, complaints, feedback, feedback_score_sum,
                                          first_contact_at, last_contact_at,
                                          first_touchpoint_at, last_touchpoint_at)
        SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                             $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[],
                             $10::timestamptz[], $11::timestamptz[], $12::timestamptz[],
                             $13::timestamptz[])
        ON CONFLICT (customer_id) DO UPDATE SET
            touchpoints = s.touchpoints + EXCLUDED.touchpoints,
            contacts = s.contacts + EXCLUDED.contacts,
            inbound = s.inbound + EXCLUDED.inbound,
            outbound = s.outbound + EXCLUDED.outbound,
            refusals = s.refusals + EXCLUDED.refusals,
            complaints = s.complaints + EXCLUDED.complaints,
            feedback = s.feedback + EXCLUDED.feedback,
            feedback_score_sum = s.feedback_score_sum + EXCLUDED.feedback_score_sum,
            first_contact_at = LEAST(s.first_contact_at, EXCLUDED.first_contact_at),
            last_contact_at = GREATEST(s.last_contact_at, EXCLUDED.last_contact_at),
            first_touchpoint_at = LEAST(s.first_touchpoint_at, EXCLUDED.first_touchpoint_at),
            last_touchpoint_at = GREATEST(s.last_touchpoint_at, EXCLUDED.last_touchpoint_at)
        """,
        ids,
        *([getattr(d, column) for d in values] for column in _TOTALS_COLUMNS),
    )


async def contact_summary(conn: asyncpg.Connection, customer_id: str) -> ContactTotals | None:
    """The customer's summary, or None when no touchpoint of theirs was folded."""
    row = await conn.fetchrow(
        f"SELECT {', '.join(_TOTALS_COLUMNS)} FROM contact_summary WHERE customer_id = $1",
        customer_id,
    )
    return None if row is None else ContactTotals(**dict(row))


_PAGE_SQL = """
SELECT source, event_id, occurred_at, kind, event_type, channel, summary, details
FROM timeline
WHERE customer_id = $1
  AND ($2::text[] IS NULL OR kind = ANY($2::text[]))
  {after}
ORDER BY occurred_at {direction}, source {direction}, event_id {direction}
LIMIT $3
"""
# Only these four statements are ever built: direction and cursor come from fixed fragments.
_PAGE_STATEMENTS = {
    (newest_first, with_cursor): _PAGE_SQL.format(
        direction="DESC" if newest_first else "ASC",
        after=(
            f"AND (occurred_at, source, event_id) {'<' if newest_first else '>'} "
            "($4::timestamptz, $5::text, $6::text)"
            if with_cursor
            else ""
        ),
    )
    for newest_first in (True, False)
    for with_cursor in (True, False)
}


async def timeline_page(
    conn: asyncpg.Connection,
    customer_id: str,
    *,
    kinds: Collection[str] | None,
    newest_first: bool,
    after: TimelinePosition | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to `limit` timeline rows after the position, in event-time order, then by key."""
    args: list[Any] = [customer_id, sorted(set(kinds)) if kinds else None, limit]
    if after is not None:
        args.extend(after)
    rows = await conn.fetch(_PAGE_STATEMENTS[(newest_first, after is not None)], *args)
    return [dict(row) for row in rows]


async def has_timeline(conn: asyncpg.Connection, customer_id: str) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM timeline WHERE customer_id = $1)", customer_id
    )
    return found
