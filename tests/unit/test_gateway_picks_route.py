"""The gateway's top 10, a DirectRoute like the service's: the key is admitted first, the path
and query are validated in one go with the 422 FastAPI gives for its own parameters, the filter
and limit are passed on to the service as before, and the document lists every parameter with
the security of the other guarded routes. The recommendation service is a fake that records
what it is asked."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI

from gateway_service.api import create_app
from gateway_service.auth import KeyCache, StoredKey, format_key, hash_secret
from gateway_service.config import GatewaySettings
from gateway_service.ratelimit import RateLimiter
from gateway_service.upstream import Answer
from recommendation_service.api import create_app as create_service
from recommendation_service.config import RecommendationSettings

PICKS = '{"customer_id": "C1", "strategy": "popular", "recommendations": []}'
SECRET = "a-secret-of-the-picks-tests"
PATH = "/v1/customers/{customer_id}/recommendations"


class Recommendations:
    """Answers every call with the same picks and records (method, service, path, params)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, dict[str, Any]]] = []

    async def send(
        self, method: str, service: str, path: str, params: Mapping[str, Any], *_: object
    ) -> Answer:
        self.calls.append((method, service, path, dict(params)))
        return Answer(200, PICKS.encode())


def _key(key_id: str, *scopes: str) -> tuple[StoredKey, dict[str, str]]:
    stored = StoredKey(
        key_id, key_id, hash_secret(SECRET), frozenset(scopes), frozenset(), datetime.now(UTC)
    )
    return stored, {"Authorization": f"Bearer {format_key(key_id, SECRET)}"}


READER, READS = _key("0000aaaa", "recommendations:read")
OTHER, OTHERS = _key("0000bbbb", "customers:read")


def _app(upstream: Recommendations) -> FastAPI:
    """The gateway with its state as its lifespan would set it, the keys cached (no database)."""
    app = create_app(GatewaySettings())
    app.state.services = upstream
    app.state.rate_limiter = RateLimiter(1000.0, 1000)
    app.state.key_cache = KeyCache(3600.0)
    for stored in (READER, OTHER):
        app.state.key_cache.put(stored, time.monotonic())
    return app


@asynccontextmanager
async def _client(upstream: Recommendations) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(_app(upstream))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client


async def test_the_picks_are_asked_for_with_the_limit_and_the_filter_given() -> None:
    upstream = Recommendations()
    async with _client(upstream) as client:
        plain = await client.get("/v1/customers/C1/recommendations", headers=READS)
        query = "limit=5&category=kitchen&min_price=1.5&available=true&unknown=1"
        narrowed = await client.get(
            f"/v1/customers/email:a@b.c/recommendations?{query}", headers=READS
        )
    assert plain.status_code == narrowed.status_code == 200
    assert plain.text == narrowed.text == PICKS
    assert upstream.calls == [
        ("GET", "recommendation", "/customers/C1/recommendations", {"limit": 10}),
        (
            "GET",
            "recommendation",
            "/customers/email%3Aa%40b.c/recommendations",
            {"limit": 5, "category": "kitchen", "min_price": "1.5", "available": "true"},
        ),
    ]


async def test_the_key_is_admitted_before_the_parameters_are_read() -> None:
    upstream = Recommendations()
    async with _client(upstream) as client:
        anonymous = await client.get("/v1/customers/C1/recommendations?limit=0")
        other = await client.get("/v1/customers/C1/recommendations?limit=0", headers=OTHERS)
    assert anonymous.status_code == 401 and "WWW-Authenticate" in anonymous.headers
    assert other.status_code == 403
    assert "recommendations:read" in other.json()["error"]["message"]
    assert upstream.calls == []


async def test_each_bad_parameter_is_a_422_that_names_it() -> None:
    bad = {
        "/v1/customers/C1/recommendations?limit=0": "query.limit",
        "/v1/customers/C1/recommendations?limit=51": "query.limit",
        "/v1/customers/C1/recommendations?limit=ten": "query.limit",
        "/v1/customers/C1/recommendations?available=maybe": "query.available",
        "/v1/customers/C1/recommendations?currency=pounds&limit=3": "query.currency",
        "/v1/customers/C1/recommendations?min_price=-1": "query.min_price",
        "/v1/customers/C1/recommendations?category=": "query.category",
        "/v1/customers/M%20E/recommendations": "path.customer_id",
    }
    upstream = Recommendations()
    async with _client(upstream) as client:
        for path, where in bad.items():
            refused = await client.get(path, headers=READS)
            assert refused.status_code == 422, path
            error = refused.json()["error"]
            assert error["message"] == "the request is invalid", path
            assert [problem["where"] for problem in error["details"]] == [where], path
    assert upstream.calls == []


def _documented(operation: Mapping[str, Any]) -> set[tuple[str, str, bool]]:
    return {(p["name"], p["in"], p["required"]) for p in operation["parameters"]}


def test_the_document_lists_the_service_s_parameters_and_the_key_security() -> None:
    document = create_app(GatewaySettings()).openapi()
    operation = document["paths"][PATH]["get"]
    service = create_service(RecommendationSettings()).openapi()["paths"]
    picks = service["/customers/{customer_id}/recommendations"]["get"]
    assert _documented(operation) == _documented(picks)  # all of them (the service's tests)
    assert operation["security"] == document["paths"]["/v1/products/popular"]["get"]["security"]
    assert operation["security"]  # the key, as either header
    assert {"401", "403", "422", "429", "502", "503", "504"} <= set(operation["responses"])
