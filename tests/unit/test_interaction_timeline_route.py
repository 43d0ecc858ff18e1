"""The interaction service's timeline page, a DirectRoute: a bad path or query is the 422 FastAPI
gave for its own parameters (the same `where` for each problem, path and query problems in one
answer), the filters' own checks keep their messages, and the document lists every parameter it
listed, the channel's values inline. Validation comes before the database: no lifespan runs
here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from crm_shared.contracts.events import Channel
from crm_shared.runtime.http import inlined
from interaction_service.api import create_app
from interaction_service.config import InteractionSettings

TIMELINE = "/customers/{customer_id}/timeline"


@asynccontextmanager
async def _client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(create_app(InteractionSettings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://interaction") as client:
        yield client


async def _problems(path: str) -> tuple[int, Any]:
    async with _client() as client:
        response = await client.get(path)
    error = response.json()["error"]
    return response.status_code, error.get("details", error["message"])


@pytest.mark.parametrize(
    ("query", "where"),
    [
        ("limit=0", ["query.limit"]),
        ("limit=x", ["query.limit"]),
        ("limit=201&order=sideways", ["query.limit", "query.order"]),
        ("kind=order&kind=nope", ["query.kind.1"]),
        ("channel=fax", ["query.channel.0"]),
        ("from=yesterday&to=2024-13-01", ["query.from", "query.to"]),
        ("recorded_after=x&as_of=y", ["query.recorded_after", "query.as_of"]),
    ],
)
async def test_a_bad_parameter_is_a_422_where_fastapi_put_it(query: str, where: list[str]) -> None:
    status, problems = await _problems(f"/customers/C1/timeline?{query}")
    assert status == 422
    assert [problem["where"] for problem in problems] == where


async def test_a_bad_path_and_a_bad_query_are_refused_together() -> None:
    status, problems = await _problems("/customers/no%20spaces/timeline?limit=0")
    assert status == 422
    assert [problem["where"] for problem in problems] == ["path.customer_id", "query.limit"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("event_type=crm.product.viewed.v1", "is not on timelines"),
        ("department=Bad%20Dept", "is not a department code"),
        ("as_of=2024-05-01T00:00:00", "as_of must carry a UTC offset"),
        ("cursor=zzz", "invalid cursor"),
    ],
)
async def test_the_filters_own_checks_keep_their_messages(query: str, message: str) -> None:
    status, problem = await _problems(f"/customers/C1/timeline?{query}")
    assert status == 422
    assert message in problem


def test_the_document_lists_every_parameter_as_before() -> None:
    operation = create_app(InteractionSettings()).openapi()["paths"][TIMELINE]["get"]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert list(parameters) == [
        "customer_id",
        "limit",
        "cursor",
        "kind",
        "event_type",
        "channel",
        "department",
        "from",
        "to",
        "recorded_after",
        "as_of",
        "order",
    ]
    assert parameters["customer_id"]["in"] == "path"
    assert not any(parameters[name]["required"] for name in list(parameters)[1:])
    assert parameters["limit"]["schema"]["default"] == 50
    assert parameters["order"]["schema"]["enum"] == ["desc", "asc"]
    channels = parameters["channel"]["schema"]["anyOf"][0]["items"]
    assert channels["enum"] == [channel.value for channel in Channel]
    assert set(operation["responses"]) == {"200", "422"}


def test_inlined_replaces_definitions_references_by_the_definitions() -> None:
    schema = {
        "properties": {"a": {"items": {"$ref": "#/$defs/A"}}, "b": {"$ref": "#/$defs/B"}},
        "$defs": {"A": {"enum": ["x"]}, "B": {"anyOf": [{"$ref": "#/$defs/A"}]}},
    }
    assert inlined(schema) == {
        "properties": {"a": {"items": {"enum": ["x"]}}, "b": {"anyOf": [{"enum": ["x"]}]}}
    }
