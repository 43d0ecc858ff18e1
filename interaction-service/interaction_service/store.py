"""All SQL of the interaction service. The caller owns the transaction."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from crm_shared.contracts.events import JourneyStage, Measure
from interaction_service.experience import (
    DETRACTOR_AT_MOST,
    PROMOTER_AT_LEAST,
    GroupBy,
    Period,
    Rating,
    ScoreCounts,
)
from interaction_service.journey import AT_RISK_AFTER, LOST_AFTER, Journey, Transition
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


# ----------------------------------------------------------------------------- experience
# The voice of the customer and the journey (experience.py, journey.py, experience_fold.py).

_JOURNEY_COLUMNS = tuple(f.name for f in fields(Journey))
_JOURNEY_TYPES = (
    "text", "text", "timestamptz", "bigint", "bigint", "timestamptz", "text", "timestamptz",
    "int", "bool", "smallint", "timestamptz", "bool", "timestamptz", "text",
)  # fmt: skip
_RATING_COLUMNS = tuple(f.name for f in fields(Rating))


async def add_ratings(conn: asyncpg.Connection, ratings: Sequence[Rating]) -> None:
    """Insert the ratings; one already there (the same feedback event) is left as it is."""
    if not ratings:
        return
    columns: list[list[Any]] = [[getattr(r, c) for r in ratings] for c in _RATING_COLUMNS]
    columns[_RATING_COLUMNS.index("measure")] = [r.measure.value for r in ratings]
    columns[_RATING_COLUMNS.index("dimensions")] = [json.dumps(r.dimensions) for r in ratings]
    await conn.execute(
        f"""
        INSERT INTO ratings ({", ".join(_RATING_COLUMNS)})
        SELECT source, event_id, customer_id, occurred_at, measure, score, kind, channel,
               touchpoint, department, about_kind, about_id, comment, dimensions::jsonb
        FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                    $6::smallint[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                    $12::text[], $13::text[], $14::text[])
             AS r({", ".join(_RATING_COLUMNS)})
        ON CONFLICT (source, event_id) DO NOTHING
        """,
        *columns,
    )


def _journey(row: Mapping[str, Any]) -> Journey:
    values = dict(row)
    values["stage"] = JourneyStage(values["stage"])
    return Journey(**values)


async def lock_journeys(
    conn: asyncpg.Connection, customer_ids: Collection[str]
) -> dict[str, Journey]:
    """The journeys of these customers, locked for the caller's transaction (new ones absent)."""
    rows = await conn.fetch(
        f"SELECT {', '.join(_JOURNEY_COLUMNS)} FROM journeys"
        " WHERE customer_id = ANY($1::text[]) ORDER BY customer_id FOR UPDATE",
        sorted(customer_ids),
    )
    return {row["customer_id"]: _journey(row) for row in rows}


async def inactive_journeys(
    conn: asyncpg.Connection, partition: int, now: datetime
) -> list[Journey]:
    """Locked journeys of an order partition that a tick at `now` may move: not at risk yet and
    no order for AT_RISK_AFTER, or not lost yet and no order for LOST_AFTER."""
    rows = await conn.fetch(
        f"SELECT {', '.join(_JOURNEY_COLUMNS)} FROM journeys"
        " WHERE order_partition = $1 AND stage <> 'lost' AND last_order_at <= $2"
        " AND (stage <> 'at_risk' OR last_order_at <= $3)"
        " ORDER BY customer_id FOR UPDATE",
        partition,
        now - AT_RISK_AFTER,
        now - LOST_AFTER,
    )
    return [_journey(row) for row in rows]


async def save_journeys(conn: asyncpg.Connection, journeys: Sequence[Journey]) -> None:
    if not journeys:
        return
    ordered = sorted(journeys, key=lambda j: j.customer_id)
    columns = [[getattr(j, c) for j in ordered] for c in _JOURNEY_COLUMNS]
    columns[_JOURNEY_COLUMNS.index("stage")] = [j.stage and j.stage.value for j in ordered]
    arrays = ", ".join(f"${n}::{t}[]" for n, t in enumerate(_JOURNEY_TYPES, start=1))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _JOURNEY_COLUMNS[1:])
    await conn.execute(
        f"INSERT INTO journeys ({', '.join(_JOURNEY_COLUMNS)}) SELECT * FROM unnest({arrays})"
        f" ON CONFLICT (customer_id) DO UPDATE SET {updates}",
        *columns,
    )


async def add_transitions(conn: asyncpg.Connection, transitions: Sequence[Transition]) -> None:
    if not transitions:
        return
    await conn.execute(
        """
        INSERT INTO journey_transitions (customer_id, version, from_stage, to_stage, trigger,
                                         changed_at)
        SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                             $6::timestamptz[])
        ON CONFLICT (customer_id, version) DO NOTHING
        """,
        [t.customer_id for t in transitions],
        [t.version for t in transitions],
        [t.from_stage and t.from_stage.value for t in transitions],
        [t.to_stage.value for t in transitions],
        [t.trigger for t in transitions],
        [t.at for t in transitions],
    )


async def advance_experience_clocks(
    conn: asyncpg.Connection, newest: Mapping[tuple[str, int], datetime]
) -> None:
    """Move each partition's clock forward to its newest tick (never back)."""
    if not newest:
        return
    keys = sorted(newest)
    await conn.execute(
        """
        INSERT INTO experience_clocks AS c (topic, partition, now)
        SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[])
        ON CONFLICT (topic, partition) DO UPDATE SET now = GREATEST(c.now, EXCLUDED.now)
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [newest[k] for k in keys],
    )


async def experience_clocks(conn: asyncpg.Connection, topic: str) -> dict[int, datetime]:
    rows = await conn.fetch("SELECT partition, now FROM experience_clocks WHERE topic = $1", topic)
    return {row["partition"]: row["now"] for row in rows}


async def journey_of(conn: asyncpg.Connection, customer_id: str) -> Journey | None:
    row = await conn.fetchrow(
        f"SELECT {', '.join(_JOURNEY_COLUMNS)} FROM journeys WHERE customer_id = $1", customer_id
    )
    return None if row is None else _journey(row)


async def transitions_of(conn: asyncpg.Connection, customer_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT version, from_stage, to_stage, trigger, changed_at FROM journey_transitions"
        " WHERE customer_id = $1 ORDER BY version",
        customer_id,
    )
    return [dict(row) for row in rows]


async def clock_of(conn: asyncpg.Connection, topic: str, partition: int | None) -> datetime | None:
    """The partition's clock; for a customer without one, the newest clock of the topic."""
    found: datetime | None = await conn.fetchval(
        "SELECT max(now) FROM experience_clocks"
        " WHERE topic = $1 AND ($2::int IS NULL OR partition = $2)",
        topic,
        partition,
    )
    return found


def _rating(row: Mapping[str, Any]) -> Rating:
    values = dict(row)
    values["measure"] = Measure(values["measure"])
    values["dimensions"] = dict(values["dimensions"])  # the pool decodes jsonb
    return Rating(**values)


async def ratings_of(conn: asyncpg.Connection, customer_id: str, limit: int) -> list[Rating]:
    """The customer's newest ratings first."""
    rows = await conn.fetch(
        f"SELECT {', '.join(_RATING_COLUMNS)} FROM ratings WHERE customer_id = $1"
        " ORDER BY occurred_at DESC, source DESC, event_id DESC LIMIT $2",
        customer_id,
        limit,
    )
    return [_rating(row) for row in rows]


_SCORE_COUNTS = f"""
count(*) FILTER (WHERE measure = 'nps') AS nps_responses,
count(*) FILTER (WHERE measure = 'nps' AND score >= {PROMOTER_AT_LEAST}) AS promoters,
count(*) FILTER (WHERE measure = 'nps' AND score <= {DETRACTOR_AT_MOST[Measure.NPS]})
    AS nps_detractors,
count(*) FILTER (WHERE measure = 'csat') AS csat_responses,
coalesce(sum(score) FILTER (WHERE measure = 'csat'), 0) AS csat_sum,
count(*) FILTER (WHERE measure = 'ces') AS effort_responses,
coalesce(sum(score) FILTER (WHERE measure = 'ces'), 0) AS effort_sum
"""
"""The counts experience.figures needs, with experience's thresholds (constants, not input)."""
_COUNT_FIELDS = tuple(f.name for f in fields(ScoreCounts))
_TREND_STATEMENTS = {
    group: f"""
    SELECT {group} AS grp, date_trunc($1, occurred_at, 'UTC') AS period_start, {_SCORE_COUNTS}
    FROM ratings
    WHERE ($2::timestamptz IS NULL OR occurred_at >= $2)
      AND ($3::timestamptz IS NULL OR occurred_at < $3)
    GROUP BY 1, 2
    """
    for group in ("touchpoint", "department", "channel")
}
"""One statement per grouping column: the column comes from this fixed set, never from input."""


def _counts(row: Mapping[str, Any]) -> ScoreCounts:
    return ScoreCounts(**{name: int(row[name]) for name in _COUNT_FIELDS})


async def trend_counts(
    conn: asyncpg.Connection,
    by: GroupBy,
    period: Period,
    since: datetime | None,
    until: datetime | None,
) -> list[tuple[str | None, datetime, ScoreCounts]]:
    """The score counts of each group and period (UTC periods; weeks start on Monday)."""
    rows = await conn.fetch(_TREND_STATEMENTS[by], period, since, until)
    return [(row["grp"], row["period_start"], _counts(row)) for row in rows]


async def dimension_counts(
    conn: asyncpg.Connection, touchpoint: str | None
) -> list[tuple[str, str, int, int]]:
    """(touchpoint, dimension, ratings, score sum) over every rating that scores dimensions."""
    rows = await conn.fetch(
        """
        SELECT touchpoint, d.key AS dimension, count(*) AS n, sum(d.value::int) AS total
        FROM ratings, jsonb_each_text(dimensions) AS d
        WHERE dimensions <> '{}' AND ($1::text IS NULL OR touchpoint = $1)
        GROUP BY 1, 2
        """,
        touchpoint,
    )
    return [(r["touchpoint"], r["dimension"], int(r["n"]), int(r["total"])) for r in rows]


async def stage_counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT stage, count(*) AS n FROM journeys GROUP BY stage")
    return {row["stage"]: int(row["n"]) for row in rows}


async def last_rating_per_channel(conn: asyncpg.Connection) -> dict[str, datetime]:
    """The event time of the newest rating of each channel (one index probe per channel)."""
    rows = await conn.fetch(
        """
        WITH RECURSIVE channels AS (
            (SELECT channel FROM ratings ORDER BY channel LIMIT 1)
            UNION ALL
            SELECT (SELECT r.channel FROM ratings r WHERE r.channel > c.channel
                    ORDER BY r.channel LIMIT 1)
            FROM channels c WHERE c.channel IS NOT NULL
        )
        SELECT channel, (SELECT max(occurred_at) FROM ratings r WHERE r.channel = c.channel)
               AS newest
        FROM channels c WHERE channel IS NOT NULL
        """
    )
    return {row["channel"]: row["newest"] for row in rows}


async def recent_counts_per_touchpoint(
    conn: asyncpg.Connection, window: timedelta
) -> dict[str, ScoreCounts]:
    """Score counts per touchpoint over `window` before the projection's time (its newest tick
    or rating, whichever is later)."""
    rows = await conn.fetch(
        f"""
        WITH horizon AS (
            SELECT greatest((SELECT max(now) FROM experience_clocks),
                            (SELECT max(occurred_at) FROM ratings)) AS now
        )
        SELECT touchpoint, {_SCORE_COUNTS}
        FROM ratings, horizon
        WHERE occurred_at > horizon.now - $1::interval
        GROUP BY touchpoint
        """,
        window,
    )
    return {row["touchpoint"]: _counts(row) for row in rows}
