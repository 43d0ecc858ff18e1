"""A service's read API served in the test process over a test database, called with the
platform's service token as the gateway calls it."""

from __future__ import annotations

import os

import asyncpg
import httpx
from fastapi import FastAPI

from crm_shared.runtime.config import ServiceSettings


async def api_get(app: FastAPI, settings: ServiceSettings, path: str) -> httpx.Response:
    """GET `path` of `app` (built from `settings`), its lifespan (the pool) around the call."""
    token = settings.platform.service_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api") as client,
    ):
        return await client.get(path, headers=headers)


async def database_url(conn: asyncpg.Connection | asyncpg.Pool) -> str:
    """The DSN of the test database `conn` is connected to (for a service's settings)."""
    return f"{os.environ['CRM_PG_DSN_BASE']}/{await conn.fetchval('SELECT current_database()')}"
