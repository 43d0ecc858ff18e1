"""Manage the gateway's API keys.

    python -m gateway_service.keys create --name shop --scopes customers:read,events:write \
        --sources shop,pos
    python -m gateway_service.keys revoke <key_id>
    python -m gateway_service.keys list

`create` prints the key, and only the key, on stdout: it is shown once and cannot be recovered
(only a hash is stored). Everything else goes to stderr. A key with events:write publishes only
as the CloudEvents sources given in --sources.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from crm_shared.runtime.db import open_pool
from gateway_service import store
from gateway_service.auth import SCOPES, format_key, hash_secret, parse_scopes, parse_sources
from gateway_service.config import GatewaySettings


@asynccontextmanager
async def _connection(settings: GatewaySettings) -> AsyncIterator[asyncpg.Connection]:
    """The gateway database, created and migrated first if this is its first use."""
    pool = await open_pool(settings.dsn, store.MIGRATIONS, 1)
    try:
        async with pool.acquire() as conn:
            yield conn
    finally:
        await pool.close()


async def create(
    settings: GatewaySettings, name: str, scopes: frozenset[str], sources: frozenset[str]
) -> str:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    async with _connection(settings) as conn:
        await store.create_key(conn, key_id, name, hash_secret(secret), scopes, sources)
    return format_key(key_id, secret)


async def revoke(settings: GatewaySettings, key_id: str) -> bool:
    async with _connection(settings) as conn:
        revoked_at = await store.revoke_key(conn, key_id)
    if revoked_at is None:
        print(f"no API key {key_id!r}", file=sys.stderr)
        return False
    print(f"API key {key_id} revoked (since {revoked_at.isoformat()})", file=sys.stderr)
    return True


async def show(settings: GatewaySettings) -> None:
    async with _connection(settings) as conn:
        keys = await store.list_keys(conn)
    print(f"{'KEY ID':<17} {'NAME':<24} {'SCOPES':<30} {'SOURCES':<24} {'CREATED':<26} REVOKED")
    for key in keys:
        revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-"
        sources = ",".join(sorted(key.sources)) or "-"
        print(
            f"{key.key_id:<17} {key.name:<24} {','.join(sorted(key.scopes)):<30} {sources:<24} "
            f"{key.created_at.isoformat(timespec='seconds'):<26} {revoked}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway_service.keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("create", help="create a key and print it (once) on stdout")
    new.add_argument("--name", required=True, help="who or what the key is for")
    new.add_argument(
        "--scopes", required=True, help=f"comma-separated, of: {', '.join(sorted(SCOPES))}"
    )
    new.add_argument(
        "--sources",
        default="",
        help="comma-separated CloudEvents sources the key may publish as (needed for events:write)",
    )
    gone = commands.add_parser("revoke", help="stop a key from working")
    gone.add_argument("key_id")
    commands.add_parser("list", help="every key, revoked ones included")
    args = parser.parse_args(argv)

    settings = GatewaySettings()
    if args.command == "create":
        try:
            scopes = parse_scopes(args.scopes)
            sources = parse_sources(args.sources, scopes)
        except ValueError as error:
            parser.error(str(error))
        name = args.name.strip()
        if not name:
            parser.error("--name must not be empty")
        key = asyncio.run(create(settings, name, scopes, sources))
        print(key)
        print("store this key now: it is not shown again", file=sys.stderr)
        return 0
    if args.command == "revoke":
        return 0 if asyncio.run(revoke(settings, args.key_id)) else 1
    asyncio.run(show(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
