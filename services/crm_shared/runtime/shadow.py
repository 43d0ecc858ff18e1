"""The SQL of a rebuild: a shadow schema beside the live one, its fingerprints, and the switch.

A projection's code addresses its tables unqualified, so a connection whose search_path is the
shadow schema folds into the shadow while the live schema (normally `public`) keeps serving.
The switch renames the schemas in one transaction; PostgreSQL invalidates every cached plan when
a schema is renamed, so the live processes' next statements resolve to the new tables.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from graphlib import TopologicalSorter
from pathlib import Path

import asyncpg

from crm_shared.runtime.db import apply_migrations

SHADOW_SCHEMA = "rebuild_shadow"

NOT_FINGERPRINTED = frozenset({"outbox", "schema_migrations", "applied_events"})
"""Bookkeeping whose rows differ by design: derived events are not written again by a rebuild,
migrations are applied at other times, and the live projection forgets applied ids past the
deduplication window (those are compared one way: applied_ids_missing)."""

SCOPED_COLUMN = "customer_id"
"""Rows with this column change only with events about that customer, about a customer the
projection relates to it (Projection.related) or with a clock tick: the held comparison after a
catch-up looks at those customers' rows alone."""


@dataclass(frozen=True)
class JobColumns:
    """Columns of a folded table that a worker's job writes, not the fold: a replay leaves them
    as the fold does. A rebuild compares them as the fold leaves them (`as_folded`: SQL over
    `{row}`, the table; a column not named there is not compared) and, at the switch, carries
    the live values into the shadow's rows of the same `key` where those agree."""

    key: str
    columns: tuple[str, ...]
    as_folded: Mapping[str, str]


@dataclass(frozen=True)
class RebuildRules:
    """What a projection's rebuild treats apart from the tables its fold writes, as the
    projection declares it (`Projection.rebuild_rules`): its worker's jobs and what it did in the
    world do not replay, and some of what it folds does not replay exactly."""

    carried: tuple[str, ...] = ()
    """What the service did in the world rather than what the log says (a send ledger, the lists
    it published). A replay cannot redo a send or unpublish a list, so these are not compared;
    the live rows are carried into the shadow at the switch, under a lock that holds their
    writers. Locked in this order, the order their writers write them, so that the carry does
    not hold one table while it waits for a writer that waits for it."""
    job_outputs: tuple[str, ...] = ()
    """Tables only the projection's jobs write (and its API's requests to them), from the folded
    tables. A replay does not run the jobs, so these are not compared; as the folded tables
    compare equal, the live rows are right for the shadow and are carried at the switch, so
    nothing is served less while the jobs would run again. Locked before the live writes are
    held, in the order the jobs write them: a job that wrote one finishes first; the next waits
    at its first write holding none of the held tables, and after the switch lands in the new
    ones."""
    job_queues: tuple[str, ...] = ()
    """What the fold marks for the jobs and the jobs clear: not compared (how far the jobs got is
    a matter of timing), carried with the jobs' outputs so the two stay consistent. Not locked:
    the folds are held, and a job waiting on an output clears its marks in the new tables."""
    job_columns: Mapping[str, JobColumns] = field(default_factory=dict)
    """Folded tables with columns a job writes (`JobColumns`)."""
    computed: tuple[str, ...] = ()
    """Tables the jobs compute from the projection at wall-clock times and a rebuild neither
    compares nor carries: its shadow holds none until the jobs compute them again."""
    left_out_columns: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Columns left out of a table's checksum beside BOOKKEEPING_COLUMNS: what a replay gives
    back differently by design (when, not what; what depended on how two topics interleaved)."""
    compared_rows: Mapping[str, str] = field(default_factory=dict)
    """Tables compared over the rows this SQL condition keeps, for the same reasons."""

    def not_compared(self, table: str) -> bool:
        return (
            table in self.carried
            or table in self.job_outputs
            or table in self.job_queues
            or table in self.computed
        )

    def named(self) -> dict[str, frozenset[str]]:
        """Every table these rules name, with the columns they name in it. A name the schema
        does not hold would set nothing apart, silently: a test checks each against the
        projection's migrations."""
        named: dict[str, frozenset[str]] = {
            table: frozenset()
            for table in (
                *self.carried,
                *self.job_outputs,
                *self.job_queues,
                *self.computed,
                *self.compared_rows,
            )
        }
        for table, job in self.job_columns.items():
            named[table] = named.get(table, frozenset()) | {job.key, *job.columns}
        for table, left_out in self.left_out_columns.items():
            named[table] = named.get(table, frozenset()) | left_out
        return named


BOOKKEEPING_COLUMNS: dict[str, frozenset[str]] = {"consumer_positions": frozenset({"updated_at"})}
"""Columns of the shared bookkeeping that say when, not what, left out of every checksum."""

LIVE_WRITES = ("applied_events", "consumer_positions", "outbox")
"""Every live worker transaction writes the first two (and the relay the outbox): holding them
stops the live side's writes, while its readers go on."""

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def quoted(name: str) -> str:
    """A schema or table name fit for SQL text; anything unusual is refused, not escaped."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


@dataclass(frozen=True)
class Fingerprint:
    """What a table holds, in two numbers: its rows and an order-free checksum of their text."""

    rows: int
    checksum: str
    columns: tuple[str, ...]


async def live_schema(conn: asyncpg.Connection) -> str | None:
    """The schema the projection's processes read (where their search_path finds
    consumer_positions), or None when the projection's database holds no projection yet."""
    schema: str | None = await conn.fetchval(
        "SELECT relnamespace::regnamespace::text FROM pg_class"
        " WHERE oid = to_regclass('consumer_positions')"
    )
    return schema


async def create_shadow(conn: asyncpg.Connection, shadow: str, migrations: Path) -> None:
    """A fresh shadow schema (a leftover of a failed rebuild is dropped) with the projection's
    migrations applied, its tables unlogged while they are filled. `conn`'s search_path must be
    the shadow alone (db.connect_in_schema)."""
    await conn.execute(f"DROP SCHEMA IF EXISTS {quoted(shadow)} CASCADE")
    await conn.execute(f"CREATE SCHEMA {quoted(shadow)}")
    await apply_migrations(conn, migrations)
    for table in await tables(conn, shadow):
        await conn.execute(f"ALTER TABLE {quoted(shadow)}.{quoted(table)} SET UNLOGGED")


async def drop_indexes(conn: asyncpg.Connection, schema: str, names: Sequence[str]) -> list[str]:
    """Drop these indexes of the schema; return the statements that make them again as the
    migrations did (`create_indexes`, once the tables are filled). An index that backs a primary
    key or unique constraint goes with its constraint and comes back as that constraint."""
    rows = await conn.fetch(
        "SELECT i.tablename, i.indexname, i.indexdef, pg_get_constraintdef(k.oid) AS constraintdef"
        " FROM pg_indexes i LEFT JOIN pg_constraint k"
        "   ON k.conindid = format('%I.%I', i.schemaname, i.indexname)::regclass"
        "   AND k.conrelid = format('%I.%I', i.schemaname, i.tablename)::regclass"
        "   AND k.contype IN ('p', 'u')"
        " WHERE i.schemaname = $1 AND i.indexname = ANY($2::text[]) ORDER BY i.indexname",
        schema,
        list(names),
    )
    missing = set(names) - {row["indexname"] for row in rows}
    if missing:
        raise ValueError(f"no index {sorted(missing)} in schema {schema}")
    made: list[str] = []
    for row in rows:
        index = quoted(row["indexname"])
        if row["constraintdef"] is None:
            await conn.execute(f"DROP INDEX {quoted(schema)}.{index}")
            made.append(row["indexdef"])
        else:
            table = f"{quoted(schema)}.{quoted(row['tablename'])}"
            await conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {index}")
            made.append(f"ALTER TABLE {table} ADD CONSTRAINT {index} {row['constraintdef']}")
    return made


async def create_indexes(conn: asyncpg.Connection, definitions: Sequence[str]) -> None:
    for definition in definitions:
        await conn.execute(definition)


async def make_durable(conn: asyncpg.Connection, schema: str) -> None:
    """Turn the unlogged tables logged (written to the WAL once) before they go live, each
    after the tables its foreign keys reference (a logged table cannot reference an unlogged
    one: by name, broadcast's campaign_reasons came before campaigns and the rebuild failed)."""
    for table in TopologicalSorter(await tables(conn, schema)).static_order():
        await conn.execute(f"ALTER TABLE {quoted(schema)}.{quoted(table)} SET LOGGED")


async def drop_schema(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {quoted(schema)} CASCADE")


async def tables(conn: asyncpg.Connection, schema: str) -> dict[str, list[str]]:
    """The schema's tables by name, each with the other tables its foreign keys reference."""
    rows = await conn.fetch(
        "SELECT c.relname, array(SELECT r.relname FROM pg_constraint k"
        "   JOIN pg_class r ON r.oid = k.confrelid"
        "   WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.confrelid <> c.oid) AS referenced"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.relname",
        schema,
    )
    return {row["relname"]: row["referenced"] for row in rows}


async def positions(conn: asyncpg.Connection, schema: str) -> dict[tuple[str, int], int]:
    rows = await conn.fetch(
        f"SELECT topic, partition, next_offset FROM {quoted(schema)}.consumer_positions"
    )
    return {(row["topic"], row["partition"]): row["next_offset"] for row in rows}


@dataclass(frozen=True)
class _Compared:
    """How one table is compared: its columns (bookkeeping left out), each row as text, and the
    rows kept (`RebuildRules.compared_rows`, and the scope's customers when given)."""

    source: str
    columns: tuple[str, ...]
    row_text: str
    where: str
    args: tuple[list[str], ...]


async def _compared_tables(
    conn: asyncpg.Connection, schema: str, rules: RebuildRules, customers: Sequence[str] | None
) -> dict[str, _Compared]:
    found: dict[str, _Compared] = {}
    for table in await tables(conn, schema):
        if table in NOT_FINGERPRINTED or rules.not_compared(table):
            continue
        source = f"{quoted(schema)}.{quoted(table)}"
        names = await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attname",
            source,
        )
        job = rules.job_columns.get(table)
        as_folded = job.as_folded if job is not None else {}
        left_out = (
            BOOKKEEPING_COLUMNS.get(table, frozenset())
            | rules.left_out_columns.get(table, frozenset())
            | (set(job.columns) - set(as_folded) if job is not None else set())
        )
        kept = tuple(row["attname"] for row in names if row["attname"] not in left_out)
        scoped = customers is not None and SCOPED_COLUMN in kept
        values = (
            as_folded[name].format(row=source) if name in as_folded else quoted(name)
            for name in kept
        )
        found[table] = _Compared(
            source,
            kept,
            f"ROW({', '.join(values)})::text",
            f"{rules.compared_rows.get(table, 'true')}"
            + (f" AND {SCOPED_COLUMN} = ANY($1::text[])" if scoped else ""),
            (list(customers or ()),) if scoped else (),
        )
    return found


async def fingerprints(
    conn: asyncpg.Connection,
    schema: str,
    rules: RebuildRules,
    customers: Sequence[str] | None = None,
) -> dict[str, Fingerprint]:
    """Every compared table's row count and checksum: the sum of each row's 64-bit hash of its
    text (columns by name, bookkeeping columns left out). A sum needs no sort and no memory
    beyond one row, and does not depend on the physical order of rows or columns. The hash is
    PostgreSQL's own (`hashtextextended`), over the same text an md5 was taken of before: equal
    text, equal hash; it costs half of what the md5 and its hex digits did (docs/performance.md).

    With `customers`, a table that has a `customer_id` column is fingerprinted over those
    customers' rows only (the others whole): after a comparison of everything, what events of
    these customers alone changed (SCOPED_COLUMN)."""
    found: dict[str, Fingerprint] = {}
    for table, compared in (await _compared_tables(conn, schema, rules, customers)).items():
        rows, checksum = await conn.fetchrow(
            f"SELECT count(*), coalesce(sum(hashtextextended({compared.row_text}, 0)), 0)::text"
            f" FROM {compared.source} WHERE {compared.where}",
            *compared.args,
        )
        found[table] = Fingerprint(rows, checksum, compared.columns)
    return found


async def row_digests(
    conn: asyncpg.Connection,
    schema: str,
    rules: RebuildRules,
    table: str,
    customers: Sequence[str] | None = None,
) -> Counter[str]:
    """The md5 of each compared row of one table (as `fingerprints` sees them), counted: two
    sides' digests tell which rows differ once their fingerprints do."""
    compared = (await _compared_tables(conn, schema, rules, customers))[table]
    rows = await conn.fetch(
        f"SELECT md5({compared.row_text}) AS digest FROM {compared.source} WHERE {compared.where}",
        *compared.args,
    )
    return Counter(row["digest"] for row in rows)


async def rows_of_digests(
    conn: asyncpg.Connection, schema: str, rules: RebuildRules, table: str, digests: Sequence[str]
) -> list[str]:
    """The compared rows of one table whose md5 is one of these, as text (columns by name)."""
    compared = (await _compared_tables(conn, schema, rules, None))[table]
    rows = await conn.fetch(
        f"SELECT {compared.row_text} AS row FROM {compared.source}"
        f" WHERE {compared.where} AND md5({compared.row_text}) = ANY($1::text[]) ORDER BY 1",
        list(digests),
    )
    return [f"({', '.join(compared.columns)}) = {row['row']}" for row in rows]


async def applied_ids_missing(
    conn: asyncpg.Connection,
    live: str,
    shadow: str,
    *,
    applied_before: datetime | None = None,
    applied_since: datetime | None = None,
) -> int:
    """Event ids the live projection applied (and still remembers) that the shadow did not;
    only those applied before or since a time when given (applied_events.applied_at)."""
    missing: int = await conn.fetchval(
        f"SELECT count(*) FROM {quoted(live)}.applied_events l WHERE NOT EXISTS ("
        f" SELECT 1 FROM {quoted(shadow)}.applied_events s"
        " WHERE s.source = l.source AND s.id = l.id)"
        " AND ($1::timestamptz IS NULL OR l.applied_at < $1)"
        " AND ($2::timestamptz IS NULL OR l.applied_at >= $2)",
        applied_before,
        applied_since,
    )
    return missing


async def oldest_transaction_start(conn: asyncpg.Connection) -> datetime:
    """When the oldest transaction now open in this database began (this statement's own, if
    none is older): whatever commits from now on was applied at or after it."""
    started: datetime = await conn.fetchval(
        "SELECT least(min(xact_start), statement_timestamp()) FROM pg_stat_activity"
        " WHERE datname = current_database()"
    )
    return started


async def hold_live_writes(
    conn: asyncpg.Connection, live: str, rules: RebuildRules, timeout_seconds: float
) -> None:
    """In the caller's transaction: wait for the jobs writing their outputs (`job_outputs`) and
    the live batch in flight to commit, then stop the next ones (they block on their first
    write) until the transaction ends. Reads go on."""
    await conn.execute(f"SET LOCAL lock_timeout = '{int(timeout_seconds * 1000)}ms'")
    present = await tables(conn, live)
    outputs = [f"{quoted(live)}.{quoted(table)}" for table in rules.job_outputs if table in present]
    if outputs:
        await conn.execute(f"LOCK TABLE {', '.join(outputs)} IN EXCLUSIVE MODE")
    held = ", ".join(f"{quoted(live)}.{table}" for table in LIVE_WRITES)
    await conn.execute(f"LOCK TABLE {held} IN EXCLUSIVE MODE")


async def carry_unsent_outbox(conn: asyncpg.Connection, live: str, shadow: str) -> int:
    """Copy the derived events the live relay has not published yet into the shadow's outbox,
    under their sequence numbers (a relay blocked on taking them takes them from the new table
    once the lock is released), and continue the shadow's sequence after the live one. Returns
    how many were carried."""
    status = await conn.execute(
        f"INSERT INTO {quoted(shadow)}.outbox"
        " (seq, topic, key, value, event_id, type, created_at) OVERRIDING SYSTEM VALUE"
        " SELECT seq, topic, key, value, event_id, type, created_at"
        f" FROM {quoted(live)}.outbox ORDER BY seq"
    )
    live_sequence = await conn.fetchval(
        "SELECT pg_get_serial_sequence($1, 'seq')", f"{quoted(live)}.outbox"
    )
    last, called = await conn.fetchrow(f"SELECT last_value, is_called FROM {live_sequence}")
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence($1, 'seq'), $2, $3)",
        f"{quoted(shadow)}.outbox",
        last,
        called,
    )
    return int(status.rsplit(" ", 1)[-1])


async def carry_ledgers(
    conn: asyncpg.Connection, live: str, shadow: str, rules: RebuildRules
) -> int:
    """In the caller's transaction: the live rows of the rules' carried tables, job queues and
    job outputs the live schema has replace the shadow's, the job columns are carried, and every
    shadow sequence goes on after the live one. The ledgers and job columns' tables are locked
    against writes first (a sender's update waits, then lands in the new tables after the
    switch), the job columns' first, as the broadcast planning job locks its campaign before the
    ledger; the job outputs were locked by `hold_live_writes`. Returns how many rows were
    carried."""
    present = set(await tables(conn, live))
    jobs = [table for table in rules.job_columns if table in present]
    ledgers = [table for table in rules.carried if table in present]
    outputs = [table for table in rules.job_queues + rules.job_outputs if table in present]
    carried = 0
    if jobs + ledgers:
        held = ", ".join(f"{quoted(live)}.{quoted(table)}" for table in jobs + ledgers)
        await conn.execute(f"LOCK TABLE {held} IN EXCLUSIVE MODE")
    for table in reversed(outputs + ledgers):  # referencing tables emptied first
        await conn.execute(f"DELETE FROM {quoted(shadow)}.{quoted(table)}")
    for table in outputs + ledgers:  # referenced tables filled first
        source, target = f"{quoted(live)}.{quoted(table)}", f"{quoted(shadow)}.{quoted(table)}"
        status = await conn.execute(f"INSERT INTO {target} SELECT * FROM {source}")
        carried += int(status.rsplit(" ", 1)[-1])
    for table in jobs:
        carried += await _carry_job_columns(conn, live, shadow, table, rules.job_columns[table])
    await _continue_sequences(conn, live, shadow)
    return carried


async def _continue_sequences(conn: asyncpg.Connection, live: str, shadow: str) -> None:
    """Every shadow sequence goes on after the larger of its own and the live one's values: the
    carried rows keep their numbers (model versions, marks, request ids), and a number the live
    side handed out is never handed out again."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind = 'S'",
        shadow,
    )
    for (name,) in rows:
        following = [
            await conn.fetchval(
                f"SELECT last_value + is_called::int FROM {quoted(schema)}.{quoted(name)}"
            )
            for schema in (live, shadow)
        ]
        await conn.execute(
            "SELECT setval($1::regclass, $2, false)",
            f"{quoted(shadow)}.{quoted(name)}",
            max(following),
        )


async def _carry_job_columns(
    conn: asyncpg.Connection, live: str, shadow: str, table: str, job: JobColumns
) -> int:
    """The live values of the job's columns into the shadow's rows of the same key where both
    agree on what the fold left (where they do not, only a forced switch goes on, and the
    shadow's rows stay as the fold left them)."""
    names = ", ".join(quoted(name) for name in job.columns)
    taken = ", ".join(f"l.{quoted(name)}" for name in job.columns)
    agree = "".join(
        f" AND {folded.format(row='s')} IS NOT DISTINCT FROM {folded.format(row='l')}"
        for folded in job.as_folded.values()
    )
    status = await conn.execute(
        f"UPDATE {quoted(shadow)}.{quoted(table)} AS s SET ({names}) = ROW({taken})"
        f" FROM {quoted(live)}.{quoted(table)} AS l"
        f" WHERE l.{quoted(job.key)} = s.{quoted(job.key)}{agree}"
    )
    return int(status.rsplit(" ", 1)[-1])


async def switch(conn: asyncpg.Connection, live: str, shadow: str, retired: str) -> None:
    """In the caller's transaction: the live schema is retired and the shadow takes its name."""
    await conn.execute(f"ALTER SCHEMA {quoted(live)} RENAME TO {quoted(retired)}")
    await conn.execute(f"ALTER SCHEMA {quoted(shadow)} RENAME TO {quoted(live)}")
