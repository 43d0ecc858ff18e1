"""All SQL of the gateway: its API keys. The caller owns the connection (and any transaction)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from gateway_service.auth import StoredKey

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _key(row: Mapping[str, Any]) -> StoredKey:
    return StoredKey(
        key_id=row["key_id"],
        name=row["name"],
        key_hash=row["key_hash"],
        scopes=frozenset(row["scopes"]),
        sources=frozenset(row["sources"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


async def create_key(
    conn: asyncpg.Connection,
    key_id: str,
    name: str,
    key_hash: str,
    scopes: Collection[str],
    sources: Collection[str],
) -> StoredKey:
    row = await conn.fetchrow(
        """
        INSERT INTO api_keys (key_id, name, key_hash, scopes, sources)
        VALUES ($1, $2, $3, $4::text[], $5::text[])
        RETURNING *
        """,
        key_id,
        name,
        key_hash,
        sorted(scopes),
        sorted(sources),
    )
    assert row is not None
    return _key(row)


async def find_key(conn: asyncpg.Connection, key_id: str) -> StoredKey | None:
    row = await conn.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
    return None if row is None else _key(row)


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> datetime | None:
    """Revoke the key (a second revocation keeps the first time); None if there is no such key."""
    revoked_at: datetime | None = await conn.fetchval(
        """
        UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
        WHERE key_id = $1 RETURNING revoked_at
        """,
        key_id,
    )
    return revoked_at


async def list_keys(conn: asyncpg.Connection) -> list[StoredKey]:
    rows = await conn.fetch("SELECT * FROM api_keys ORDER BY created_at, key_id")
    return [_key(row) for row in rows]
