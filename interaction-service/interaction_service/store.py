"""All SQL of the interaction service. The caller owns the transaction."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import astuple, fields
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from crm_shared.contracts.events import JourneyStage, Measure
from crm_shared.runtime.packed import UnnestColumns
from interaction_service.cases import Breach, Case, Opening, StepRecord, Stint
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
    TimelineQuery,
    as_of_horizon,
)

_TOTALS_COLUMNS = tuple(f.name for f in fields(ContactTotals))
_ENTRY_ROWS = UnnestColumns.named(
    TimelineEntry._fields, occurred_at="timestamptz", recorded_at="timestamptz", details="jsonb"
)
_ADD_TO_TIMELINE_SQL = f"""
INSERT INTO timeline ({_ENTRY_ROWS.names}) {_ENTRY_ROWS.select}
ON CONFLICT (source, event_id) DO NOTHING
RETURNING source, event_id
"""


async def add_to_timeline(
    conn: asyncpg.Connection, entries: Sequence[TimelineEntry]
) -> set[EventKey]:
    """Insert the entries; return the keys of those not already in a timeline."""
    if not entries:
        return set()
    rows = await conn.fetch(
        _ADD_TO_TIMELINE_SQL,
        # The columns are the entries' fields, in TimelineEntry's order.
        *_ENTRY_ROWS.arguments(list(zip(*entries, strict=True))),
    )
    return {(row["source"], row["event_id"]) for row in rows}


_SUMMARY_ROWS = UnnestColumns(
    (
        ("customer_id", "text"),
        # counts, and the times of the first and last (the columns named ..._at)
        *((name, "timestamptz" if name.endswith("_at") else "bigint") for name in _TOTALS_COLUMNS),
    )
)


async def add_to_summaries(conn: asyncpg.Connection, deltas: Mapping[str, ContactTotals]) -> None:
    """Add each delta to its customer's summary: sums add up, times widen."""
    if not deltas:
        return
    ids = sorted(deltas)  # one lock order for every batch
    values = [deltas[i] for i in ids]
    await conn.execute(
        f"""
        INSERT INTO contact_summary AS s ({_SUMMARY_ROWS.names}) {_SUMMARY_ROWS.select}
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
        *_SUMMARY_ROWS.arguments(
            [ids, *([getattr(d, column) for d in values] for column in _TOTALS_COLUMNS)]
        ),
    )


async def contact_summary(conn: asyncpg.Connection, customer_id: str) -> ContactTotals | None:
    """The customer's summary, or None when no touchpoint of theirs was folded."""
    row = await conn.fetchrow(
        f"SELECT {', '.join(_TOTALS_COLUMNS)} FROM contact_summary WHERE customer_id = $1",
        customer_id,
    )
    return None if row is None else ContactTotals(**dict(row))


_PAGE_KEY = ("occurred_at", "source", "event_id")
"""A timeline row's position: pages are read and continued in this order."""
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
    with `=`, so the plan can walk the index of that filter in event-time order, even a plan
    made without the customer (planned_for_its_customer says when that is not enough). Every
    fragment is fixed text and every value a parameter, but the limit.
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
    # The limit is written in (an int): the planner then knows how few rows a page needs.
    sql = (
        f"SELECT {_PAGE_COLUMNS} FROM timeline WHERE {' AND '.join(conditions)} "
        f"ORDER BY {page_order(query.newest_first)} LIMIT {int(limit)}"
    )
    return sql, args


def page_order(newest_first: bool, prefix: str = "") -> str:
    """A page's order: event time, then the key, every column the same way."""
    direction = "DESC" if newest_first else "ASC"
    return ", ".join(f"{prefix}{column} {direction}" for column in _PAGE_KEY)


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
    if not planned_for_its_customer(query):
        return [dict(row) for row in await conn.fetch(sql, *args)]
    async with conn.transaction():  # a savepoint in the caller's: SET LOCAL lasts to its end
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        return [dict(row) for row in await conn.fetch(sql, *args)]


def planned_for_its_customer(query: TimelineQuery) -> bool:
    """Whether a page read is planned for the customer asked rather than once per connection (a
    prepared statement's generic plan, PostgreSQL's choice after five reads). With a filter no
    index of the timeline serves in event-time order (event types, several values of one filter,
    what the log recorded after an instant), a plan made without the customer may walk another
    index and sort a long timeline whole for every page; the others walk an index in page order
    whatever the customer (migration 009, tests/component/test_timeline_plans.py)."""
    several = any(len(values) > 1 for values in (query.kinds, query.channels, query.departments))
    return bool(query.event_types) or several or query.recorded_after is not None


PAGE_COLUMN_NAMES = tuple(name.strip() for name in _PAGE_COLUMNS.split(","))
"""What a page's rows hold, in the order of the API's TimelineItem fields: the API serialises the
rows as they are (tests/unit/test_interaction_page_document.py holds the two together)."""


async def overview(
    conn: asyncpg.Connection, customer_id: str, *, as_of: datetime, limit: int
) -> tuple[list[dict[str, Any]], ContactTotals | None]:
    """Up to `limit` rows of the customer's timeline (newest first, recorded by `as_of`) and
    their contact summary (None when none), read in one statement: one round trip, and one
    snapshot, so the two agree (the worker writes both in one transaction)."""
    query = TimelineQuery()
    page, args = page_statement(customer_id, query, as_of=as_of, after=None, limit=limit)
    totals = ", ".join(f"s.{column}" for column in _TOTALS_COLUMNS)
    rows = await conn.fetch(
        f"SELECT {totals}, s.customer_id IS NOT NULL AS summarised, p.* "
        "FROM (SELECT $1::text AS customer_id) AS k "
        "LEFT JOIN contact_summary s ON s.customer_id = k.customer_id "
        f"LEFT JOIN LATERAL ({page}) AS p ON true "
        f"ORDER BY {page_order(query.newest_first, 'p.')}",
        *args,
    )
    first = rows[0]  # one row at least: the outer joins keep the customer's
    summary = (
        ContactTotals(**{column: first[column] for column in _TOTALS_COLUMNS})
        if first["summarised"]
        else None
    )
    entries = [
        {column: row[column] for column in PAGE_COLUMN_NAMES}
        for row in rows
        if row["event_id"] is not None
    ]
    return entries, summary


async def has_timeline(conn: asyncpg.Connection, customer_id: str) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM timeline WHERE customer_id = $1)", customer_id
    )
    return found


# ----------------------------------------------------------------------------- cases

_CASE_COLUMNS = tuple(f.name for f in fields(Case))
_CASE_SELECT = f"SELECT {', '.join(_CASE_COLUMNS)} FROM cases"


def _stints_document(stints: Sequence[Stint]) -> list[dict[str, Any]]:
    """The stints as the jsonb column holds them (the pool's codec encodes the list)."""
    return [
        {
            "department": s.department,
            "employee_id": s.employee_id,
            "started_at": s.started_at.isoformat(),
            "ended_at": None if s.ended_at is None else s.ended_at.isoformat(),
        }
        for s in stints
    ]


def _stint(item: Mapping[str, Any]) -> Stint:
    ended = item["ended_at"]
    return Stint(
        item["department"],
        item["employee_id"],
        datetime.fromisoformat(item["started_at"]),
        None if ended is None else datetime.fromisoformat(ended),
    )


def _case(row: Mapping[str, Any]) -> Case:
    values = dict(row)
    values["stints"] = tuple(_stint(item) for item in values["stints"])
    return Case(**values)


async def cases_for_update(conn: asyncpg.Connection, case_ids: Collection[str]) -> dict[str, Case]:
    """The stored cases among these ids, locked until the transaction ends (in id order)."""
    rows = await conn.fetch(
        f"{_CASE_SELECT} WHERE case_id = ANY($1::text[]) ORDER BY case_id FOR UPDATE",
        sorted(case_ids),
    )
    return {row["case_id"]: _case(row) for row in rows}


async def openings_since(
    conn: asyncpg.Connection, customer_ids: Collection[str], since: datetime
) -> list[Opening]:
    """The customers' cases opened at or after `since` (what a repeat is compared with)."""
    rows = await conn.fetch(
        "SELECT case_id, customer_id, topic, opened_at FROM cases"
        " WHERE customer_id = ANY($1::text[]) AND opened_at >= $2",
        list(customer_ids),
        since,
    )
    return [Opening(r["case_id"], r["customer_id"], r["topic"], r["opened_at"]) for r in rows]


async def overdue_cases_for_update(
    conn: asyncpg.Connection, partition: int, now: datetime
) -> list[Case]:
    """Cases of a crm.cases partition being handled with a deadline not yet counted before
    `now`, locked (in id order)."""
    rows = await conn.fetch(
        f"""{_CASE_SELECT}
        WHERE partition = $1 AND status IN ('open', 'assigned')
          AND ((NOT resolution_breached AND resolution_due < $2)
               OR (first_response_at IS NULL AND NOT first_response_breached
                   AND first_response_due < $2))
        ORDER BY case_id FOR UPDATE""",
        partition,
        now,
    )
    return [_case(row) for row in rows]


async def save_cases(conn: asyncpg.Connection, cases: Iterable[Case]) -> None:
    """Insert or replace the cases' rows."""
    rows = [
        tuple(_stints_document(c.stints) if n == "stints" else getattr(c, n) for n in _CASE_COLUMNS)
        for c in sorted(cases, key=lambda c: c.case_id)
    ]
    if not rows:
        return
    placeholders = ", ".join(
        f"${i}::jsonb" if n == "stints" else f"${i}" for i, n in enumerate(_CASE_COLUMNS, 1)
    )
    updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in _CASE_COLUMNS if n != "case_id")
    await conn.executemany(
        f"INSERT INTO cases ({', '.join(_CASE_COLUMNS)}) VALUES ({placeholders})"
        f" ON CONFLICT (case_id) DO UPDATE SET {updates}",
        rows,
    )


async def add_case_steps(conn: asyncpg.Connection, steps: Sequence[StepRecord]) -> None:
    """Record the steps in their cases' history (a step already recorded stays as it was)."""
    if steps:
        await conn.executemany(
            "INSERT INTO case_steps (source, event_id, case_id, customer_id, occurred_at, step,"
            " accepted, reason, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)"
            " ON CONFLICT (source, event_id) DO NOTHING",
            [astuple(step) for step in steps],
        )


async def add_breaches(conn: asyncpg.Connection, breaches: Sequence[Breach]) -> None:
    if breaches:
        await conn.executemany(
            "INSERT INTO case_breaches (case_id, customer_id, target, due_at, priority, department)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (case_id, target) DO NOTHING",
            [astuple(breach) for breach in breaches],
        )


async def customer_cases(conn: asyncpg.Connection, customer_id: str) -> list[Case]:
    """The customer's cases, newest first."""
    rows = await conn.fetch(
        f"{_CASE_SELECT} WHERE customer_id = $1 ORDER BY opened_at DESC, case_id", customer_id
    )
    return [_case(row) for row in rows]


async def case_with_history(
    conn: asyncpg.Connection, case_id: str
) -> tuple[Case, list[dict[str, Any]]] | None:
    """A case and its steps in event-time order, or None when no such case was opened."""
    row = await conn.fetchrow(f"{_CASE_SELECT} WHERE case_id = $1", case_id)
    if row is None:
        return None
    steps = await conn.fetch(
        "SELECT source, event_id, occurred_at, step, accepted, reason, details FROM case_steps"
        " WHERE case_id = $1 ORDER BY occurred_at, source, event_id",
        case_id,
    )
    return _case(row), [dict(step) for step in steps]


async def department_cases(conn: asyncpg.Connection, department: str) -> list[Case]:
    """The cases a department holds now and is handling."""
    rows = await conn.fetch(
        f"{_CASE_SELECT} WHERE department = $1 AND status IN ('open', 'assigned')", department
    )
    return [_case(row) for row in rows]


async def department_known(conn: asyncpg.Connection, department: str) -> bool:
    """Whether the department ever held a case (now or before a transfer)."""
    known: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM cases WHERE department = $1)"
        " OR EXISTS (SELECT 1 FROM cases, jsonb_array_elements(stints) AS s"
        "            WHERE s->>'department' = $1)",
        department,
    )
    return known


async def department_breaches(conn: asyncpg.Connection, department: str) -> dict[str, int]:
    """SLA targets missed while the department held the case, per target."""
    rows = await conn.fetch(
        "SELECT target, count(*) AS missed FROM case_breaches WHERE department = $1"
        " GROUP BY target",
        department,
    )
    return {row["target"]: row["missed"] for row in rows}


async def department_totals(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Per department that ever held a case: cases held now, open among them, breaches."""
    rows = await conn.fetch(
        """
        SELECT d.department,
               coalesce(c.held, 0) AS cases,
               coalesce(c.open, 0) AS open_cases,
               coalesce(b.missed, 0) AS sla_breaches
        FROM (SELECT department FROM cases UNION SELECT department FROM case_breaches) d
        LEFT JOIN (SELECT department, count(*) AS held,
                          count(*) FILTER (WHERE status IN ('open', 'assigned')) AS open
                   FROM cases GROUP BY department) c USING (department)
        LEFT JOIN (SELECT department, count(*) AS missed FROM case_breaches
                   GROUP BY department) b USING (department)
        ORDER BY d.department
        """
    )
    return [dict(row) for row in rows]


async def open_case_counts(conn: asyncpg.Connection) -> dict[tuple[str, str], int]:
    """Cases being handled, per (department, priority): what the open-cases gauge shows."""
    rows = await conn.fetch(
        "SELECT department, priority, count(*) AS open FROM cases"
        " WHERE status IN ('open', 'assigned') GROUP BY department, priority"
    )
    return {(row["department"], row["priority"]): row["open"] for row in rows}


# ----------------------------------------------------------------------------- experience
# The voice of the customer and the journey (experience.py, journey.py, experience_fold.py).

_JOURNEY_COLUMNS = Journey._fields
_JOURNEY_ROWS = UnnestColumns(tuple(zip(_JOURNEY_COLUMNS, (
    "text", "text", "timestamptz", "bigint", "bigint", "timestamptz", "text", "timestamptz",
    "int", "bool", "smallint", "timestamptz", "bool", "timestamptz", "text", "timestamptz",
), strict=True)))  # fmt: skip
_RATING_COLUMNS = tuple(f.name for f in fields(Rating))
_RATING_ROWS = UnnestColumns.named(
    _RATING_COLUMNS, occurred_at="timestamptz", score="smallint", dimensions="jsonb"
)


async def add_ratings(conn: asyncpg.Connection, ratings: Sequence[Rating]) -> None:
    """Insert the ratings; one already there (the same feedback event) is left as it is."""
    if not ratings:
        return
    columns: list[list[Any]] = [[getattr(r, c) for r in ratings] for c in _RATING_COLUMNS]
    columns[_RATING_COLUMNS.index("measure")] = [r.measure.value for r in ratings]
    columns[_RATING_COLUMNS.index("dimensions")] = [json.dumps(r.dimensions) for r in ratings]
    await conn.execute(
        f"""
        INSERT INTO ratings ({_RATING_ROWS.names}) {_RATING_ROWS.select}
        ON CONFLICT (source, event_id) DO NOTHING
        """,
        *_RATING_ROWS.arguments(columns),
    )


_STAGES = {stage.value: stage for stage in JourneyStage}
_STAGE_AT = Journey._fields.index("stage")


def _journey(row: asyncpg.Record) -> Journey:
    """A journey from its row, whose columns are Journey's fields in order: by position, with
    the stage looked up, a third of building it by name through a dict and the enum's call
    (the fold reads one journey for about every record)."""
    values = list(row)
    values[_STAGE_AT] = _STAGES[values[_STAGE_AT]]
    return Journey._make(values)


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
    columns = [list(column) for column in zip(*ordered, strict=True)]
    columns[_JOURNEY_COLUMNS.index("stage")] = [j.stage and j.stage.value for j in ordered]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _JOURNEY_COLUMNS[1:])
    await conn.execute(
        f"INSERT INTO journeys ({_JOURNEY_ROWS.names}) {_JOURNEY_ROWS.select}"
        f" ON CONFLICT (customer_id) DO UPDATE SET {updates}",
        *_JOURNEY_ROWS.arguments(columns),
    )


_TRANSITION_ROWS = UnnestColumns.named(
    ("customer_id", "version", "from_stage", "to_stage", "trigger", "changed_at"),
    version="bigint",
    changed_at="timestamptz",
)


async def add_transitions(conn: asyncpg.Connection, transitions: Sequence[Transition]) -> None:
    if not transitions:
        return
    await conn.execute(
        f"""
        INSERT INTO journey_transitions ({_TRANSITION_ROWS.names}) {_TRANSITION_ROWS.select}
        ON CONFLICT (customer_id, version) DO NOTHING
        """,
        *_TRANSITION_ROWS.arguments(
            [
                [t.customer_id for t in transitions],
                [t.version for t in transitions],
                [t.from_stage and t.from_stage.value for t in transitions],
                [t.to_stage.value for t in transitions],
                [t.trigger for t in transitions],
                [t.at for t in transitions],
            ]
        ),
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
