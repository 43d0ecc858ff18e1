"""All SQL of the interaction service. The caller owns the transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

import asyncpg

from interaction_service.projection import (
    ContactTotals,
    EventKey,
    TimelineEntry,
    TimelinePosition,
    TimelineQuery,
    as_of_horizon,
)

_TOTALS_COLUMNS = tuple(f.name for f in fields(ContactTotals))
_ENTRY_COLUMNS = ", ".join(TimelineEntry._fields)


async def add_to_timeline(
    conn: asyncpg.Connection, entries: Sequence[TimelineEntry]
) -> set[EventKey]:
    """Insert the entries; return the keys of those not already in a timeline."""
    if not entries:
        return set()
    rows = await conn.fetch(
        f"""
        INSERT INTO timeline ({_ENTRY_COLUMNS})
        SELECT {_ENTRY_COLUMNS.replace("details", "details::jsonb")}
        FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                    $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                    $12::text[], $13::text[], $14::text[], $15::text[])
             AS e({_ENTRY_COLUMNS})
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


_PAGE_COLUMNS = (
    "source, event_id, occurred_at, recorded_at, kind, event_type, channel, direction, "
    "department, employee_id, topic, outcome, summary, details"
)
_FILTERS = (
    ("kinds", "kind"),
    ("event_types", "event_type"),
    ("channels", "channel"),
    ("departments", "department"),
)
"""The list filters of a query and the column each one constrains."""


def page_statement(
    customer_id: str,
    query: TimelineQuery,
    *,
    as_of: datetime,
    after: TimelinePosition | None,
    limit: int,
) -> tuple[str, list[object]]:
    """The SQL of one page read and its arguments.

    The statement has a condition only for each filter the query uses, a single value compared
    with `=`, so the plan can walk the index of that filter in event-time order (migration 003
    also makes the database plan each read for its customer). Every fragment is fixed text and
    every value a parameter, but the limit.
    """
    args: list[object] = []

    def arg(value: object, cast: str) -> str:
        args.append(value)
        return f"${len(args)}::{cast}"

    conditions = [
        f"customer_id = {arg(customer_id, 'text')}",
        f"recorded_at <= {arg(as_of, 'timestamptz')}",
        # Implied by the line above (see projection.recorded_at), and a range of the index: a
        # read as of a past instant starts there instead of filtering everything after it.
        f"occurred_at <= {arg(as_of_horizon(as_of), 'timestamptz')}",
    ]
    for field, column in _FILTERS:
        values: tuple[str, ...] = getattr(query, field)
        if len(values) == 1:
            conditions.append(f"{column} = {arg(values[0], 'text')}")
        elif values:
            conditions.append(f"{column} = ANY({arg(list(values), 'text[]')})")
    if query.occurred_from is not None:
        conditions.append(f"occurred_at >= {arg(query.occurred_from, 'timestamptz')}")
    if query.occurred_before is not None:
        conditions.append(f"occurred_at < {arg(query.occurred_before, 'timestamptz')}")
    if query.recorded_after is not None:
        conditions.append(f"recorded_at > {arg(query.recorded_after, 'timestamptz')}")
    if after is not None:
        comparison = "<" if query.newest_first else ">"
        position = (
            f"{arg(after.occurred_at, 'timestamptz')}, {arg(after.source, 'text')}, "
            f"{arg(after.event_id, 'text')}"
        )
        conditions.append(f"(occurred_at, source, event_id) {comparison} ({position})")
    direction = "DESC" if query.newest_first else "ASC"
    # The limit is written in (an int): the planner then knows how few rows a page needs.
    sql = (
        f"SELECT {_PAGE_COLUMNS} FROM timeline WHERE {' AND '.join(conditions)} "
        f"ORDER BY occurred_at {direction}, source {direction}, event_id {direction} "
        f"LIMIT {int(limit)}"
    )
    return sql, args


async def timeline_page(
    conn: asyncpg.Connection,
    customer_id: str,
    query: TimelineQuery,
    *,
    as_of: datetime,
    after: TimelinePosition | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to `limit` rows of the query recorded by `as_of` after the position, in event-time
    order, then by key."""
    sql, args = page_statement(customer_id, query, as_of=as_of, after=after, limit=limit)
    return [dict(row) for row in await conn.fetch(sql, *args)]


async def has_timeline(conn: asyncpg.Connection, customer_id: str) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM timeline WHERE customer_id = $1)", customer_id
    )
    return found
