"""DirectRoute: FastAPI documents the route but does not solve it, and its answer is checked
against the response model only in an app built to check (the test suite sets
CRM_CHECK_RESPONSES), as FastAPI checks what an endpoint returns; other statuses are not the
model's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import ResponseValidationError
from pydantic import BaseModel

from crm_shared.runtime.config import PlatformSettings
from crm_shared.runtime.http import DirectRoute, create_api

FITS = '{"customer_id": "C1", "score": 0.5}'
MISFITS = '{"customer_id": "C1", "score": "high"}'


class Answer(BaseModel):
    customer_id: str
    score: float


@asynccontextmanager
async def _no_lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield


def _app(check: bool, body: str, status: int = 200) -> FastAPI:
    app = create_api("test", "test", _no_lifespan, check_responses=check)

    async def answer(request: Request) -> Response:
        return Response(body, status_code=status, media_type="application/json")

    app.router.add_api_route(
        "/answer",
        answer,
        methods=["GET"],
        response_model=Answer,
        route_class_override=DirectRoute,
    )
    return app


async def _get(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        return await client.get("/answer")


def test_the_test_suite_builds_apps_that_check() -> None:
    assert PlatformSettings().check_responses


async def test_a_checked_answer_that_fits_is_sent_as_it_is() -> None:
    answer = await _get(_app(check=True, body=FITS))
    assert answer.status_code == 200 and answer.text == FITS


async def test_a_checked_answer_that_does_not_fit_its_model_fails_as_in_fastapi() -> None:
    with pytest.raises(ResponseValidationError) as failed:
        await _get(_app(check=True, body=MISFITS))
    assert [problem["loc"] for problem in failed.value.errors()] == [("response", "score")]
    transport = httpx.ASGITransport(_app(check=True, body=MISFITS), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        assert (await client.get("/answer")).status_code == 500


async def test_an_unchecked_app_sends_the_answer_without_parsing_it() -> None:
    answer = await _get(_app(check=False, body=MISFITS))
    assert answer.status_code == 200 and answer.text == MISFITS


async def test_an_answer_with_another_status_is_not_held_to_the_model() -> None:
    passed_on = '{"error": {"status": 404, "message": "not known"}}'
    answer = await _get(_app(check=True, body=passed_on, status=404))
    assert answer.status_code == 404 and answer.text == passed_on
