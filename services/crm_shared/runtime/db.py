"""PostgreSQL plumbing every service shares: the database, its migrations, a pool.

Migrations are plain SQL files applied in name order, each once, recorded in schema_migrations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)
"""Failures that pass: the database or the network away for a while, a transaction that lost a
race. Whoever meets one retries the same work later instead of blaming its input."""


async def ensure_database(dsn: str) -> None:
    """Create the database named in the DSN if it does not exist yet."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{name}"')
            log.info("database created", extra={"database": name})
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        pass  # another process of the same service created it first (either error, by timing)
    finally:
        await admin.close()


async def apply_migrations(conn: asyncpg.Connection, *folders: Path) -> list[str]:
    """Apply the shared bookkeeping and then the service's own migrations; return what ran."""
    applied: list[str] = []
    async with conn.transaction():
        # One migrator at a time, even when a worker and an API start together. The lock comes
        # first: two concurrent CREATE TABLE IF NOT EXISTS can both try to create the table.
        await conn.execute("SELECT pg_advisory_xact_lock(7411)")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["name"] for row in await conn.fetch("SELECT name FROM schema_migrations")}
        for folder in (SHARED_MIGRATIONS, *folders):
            for path in sorted(folder.glob("*.sql")):
                # Shared migrations keep the name they were recorded under before the package
                # was split into contracts, runtime and ops.
                owner = "crm_shared" if folder == SHARED_MIGRATIONS else folder.parent.name
                name = f"{owner}/{path.name}"
                if name in done:
                    continue
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations(name) VALUES ($1)", name)
                applied.append(name)
    if applied:
        log.info("migrations applied", extra={"migrations": applied})
    return applied


async def _init_connection(conn: asyncpg.Connection) -> None:
    """jsonb columns read and write plain Python dicts and lists."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


BACKGROUND_NICENESS = 10
"""The CPU priority (nice value) of background work: the periodic jobs' processes and their
database server processes. On a small machine a job's run (a materialized view refreshed, a
catalogue's neighbours) takes a core for seconds; at nice 10 it gets about a tenth of a core
against a fold that wants the CPU, and all of it otherwise (docs/decisions.md, "Background work
at a lower CPU priority")."""


BACKGROUND_SETTINGS = {"application_name": "crm-background", "max_parallel_workers_per_gather": "0"}
"""A background connection's session: named, so that an operator tells it apart (pg_stat_activity),
and its queries on one server process: parallel workers would start at the normal priority,
and take every core."""


def lower_priority(pid: int, niceness: int = BACKGROUND_NICENESS) -> bool:
    """Run process `pid` (0: this one) at `niceness` if it is ours to change: True when done.

    A database server process is changed only when it is a PostgreSQL process on this machine
    (`/proc/<pid>/comm` says postgres); a server elsewhere, or run by another user, is left as
    it is (False)."""
    try:
        if pid and Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
            return False
        os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except OSError:
        return False
    return True


async def _init_background_connection(conn: asyncpg.Connection) -> None:
    """A background pool's connection: plain jsonb, and its server process at lower priority."""
    await _init_connection(conn)
    lowered = lower_priority(conn.get_server_pid())
    log.debug("background connection", extra={"server_priority_lowered": lowered})


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pool's `reset` that sends nothing: asyncpg still rolls back an open transaction."""


async def open_pool(
    dsn: str,
    migrations: Path,
    size: int,
    *,
    reset_sessions: bool = True,
    background: bool = False,
) -> asyncpg.Pool:
    """Create the database if needed, migrate it, and return a connection pool.

    A `background` pool is for periodic jobs: each query runs on one server process
    (BACKGROUND_SETTINGS), at BACKGROUND_NICENESS when it is ours to change (lower_priority).

    Without `reset_sessions`, a connection goes back to the pool without asyncpg's reset query
    (RESET ALL, UNLISTEN, CLOSE ALL, advisory unlocks): one round trip less per request, for
    callers that leave nothing in a session (the read APIs use transactions and xact locks only).
    """
    await ensure_database(dsn)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=size,
        init=_init_background_connection if background else _init_connection,
        reset=None if reset_sessions else _keep_session,
        server_settings=BACKGROUND_SETTINGS if background else None,
    )
    assert pool is not None
    async with pool.acquire() as conn:
        await apply_migrations(conn, migrations)
    # A migration may set the database's defaults for new sessions (ALTER DATABASE ... SET); the
    # connection that ran it started before, and would keep the old ones for its whole life.
    await pool.expire_connections()
    return pool


async def connect_in_schema(dsn: str, schema: str, **settings: str) -> asyncpg.Connection:
    """A connection whose unqualified names resolve in `schema` alone: the projection's code
    (its folds and migrations) then reads and writes that schema's tables, e.g. a rebuild's
    shadow. Further server settings (synchronous_commit, ...) may be given."""
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn, server_settings={"search_path": schema, **settings}
    )
    await _init_connection(conn)
    return conn


def columns(rows: Iterable[Any], *fields: str) -> list[list[Any]]:
    """Rows (objects with these attributes) as one list per field: the arrays unnest() takes."""
    materialised = list(rows)
    return [[getattr(row, name) for row in materialised] for name in fields]


def matching(ids: Sequence[str]) -> tuple[str, str | list[str]]:
    """How a read matches a column against `ids` (the text after the column) and its argument
    ($1). One id is compared with `=`: PostgreSQL keeps one plan per connection for that. With
    `= ANY` of an array parameter it expects ten ids, finds the plan made without them dearer than
    one made for each call, and plans every call again, which cost more than running it (1 ms of
    planning for the profile's order-line categories of one customer, docs/performance.md)."""
    if len(ids) == 1:
        return ONE_ID, ids[0]
    return "= ANY($1::text[])", list(ids)


ONE_ID = "= $1::text"
"""What `matching` gives for one id, for statements written for one id only."""
