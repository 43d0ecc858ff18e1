"""The gateway's tracking routes when the broadcast service cannot be reached: the pixel is still
an image and the click still leads on, the loss is counted; a bad token is refused with why."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import SecretStr

from crm_shared.runtime.config import PlatformSettings
from crm_shared.runtime.http import create_api
from crm_shared.runtime.links import (
    CLICK_PATH,
    OPEN_PIXEL_PATH,
    LinkClaims,
    TrackingClaims,
    link_url,
    sign_link,
    sign_tracking,
)
from gateway_service.config import GatewaySettings
from gateway_service.tracking_routes import TRANSPARENT_PIXEL, tracking_router
from gateway_service.upstream import connect

SECRET = "a-secret-for-the-gateway-tracking-tests"
TARGET = "https://shop.example/teapot?ref=news&x=1"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def _no_lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield


@asynccontextmanager
async def _gateway() -> AsyncIterator[httpx.AsyncClient]:
    """The tracking routes of a gateway whose broadcast service is down (nothing listens)."""
    settings = GatewaySettings(
        broadcast_url=f"http://127.0.0.1:{_closed_port()}",
        platform=PlatformSettings(link_secret=SecretStr(SECRET)),
    )
    app = create_api("gateway", "test", _no_lifespan)
    app.router.routes.extend(tracking_router(settings).routes)
    async with connect(settings) as services:
        app.state.services = services
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client


def _failed(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "crm_gateway_tracking_reports_total", {"outcome": outcome, "result": "failed"}
    )
    return value or 0.0


def _url(path: str, claims: TrackingClaims) -> str:
    return link_url("http://gw", path, sign_tracking(SECRET, claims))


def test_the_pixel_is_a_transparent_one_by_one_gif() -> None:
    assert TRANSPARENT_PIXEL.startswith(b"GIF89a") and TRANSPARENT_PIXEL.endswith(b";")
    assert struct.unpack("<HH", TRANSPARENT_PIXEL[6:10]) == (1, 1)
    control = TRANSPARENT_PIXEL.index(b"\x21\xf9\x04")
    assert TRANSPARENT_PIXEL[control + 3] & 1  # the transparent-colour flag
    assert len(TRANSPARENT_PIXEL) == 43


async def test_the_pixel_is_served_uncached_while_the_broadcast_service_is_down() -> None:
    before = _failed("opened")
    async with _gateway() as client:
        answer = await client.get(_url(OPEN_PIXEL_PATH, TrackingClaims("m-1")))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/gif"
    assert answer.content == TRANSPARENT_PIXEL
    assert "no-store" in answer.headers["cache-control"]
    assert _failed("opened") == before + 1


async def test_a_click_leads_to_its_signed_target_while_the_broadcast_service_is_down() -> None:
    before = _failed("clicked")
    async with _gateway() as client:
        answer = await client.get(_url(CLICK_PATH, TrackingClaims("m-1", TARGET)))
    assert answer.status_code == 302
    assert answer.headers["location"] == TARGET
    assert _failed("clicked") == before + 1


@pytest.mark.parametrize("path", [CLICK_PATH, OPEN_PIXEL_PATH])
async def test_a_link_without_its_token_is_refused(path: str) -> None:
    async with _gateway() as client:
        answer = await client.get(path)
    assert answer.status_code == 400 and "incomplete" in answer.text


async def test_a_tampered_or_foreign_token_is_refused_with_a_page_not_a_redirect() -> None:
    token = sign_tracking(SECRET, TrackingClaims("m-1", TARGET))
    elsewhere = sign_tracking(SECRET, TrackingClaims("m-1", "https://evil.example/"))
    tampered = ".".join([elsewhere.split(".", 1)[0], *token.split(".")[1:]])
    preference_link = sign_link(SECRET, LinkClaims("c-1", message_id="m-1"))
    async with _gateway() as client:
        for bad in (tampered, preference_link):
            click = await client.get(link_url("http://gw", CLICK_PATH, bad))
            assert click.status_code == 403 and "location" not in click.headers
            assert click.headers["content-type"].startswith("text/html")
            assert "not valid" in click.text
            pixel = await client.get(link_url("http://gw", OPEN_PIXEL_PATH, bad))
            assert pixel.status_code == 403 and "not valid" in pixel.text
        no_target = await client.get(_url(CLICK_PATH, TrackingClaims("m-1")))
    assert no_target.status_code == 400 and "leads nowhere" in no_target.text
