"""The services' APIs answer only callers that hold the service token, route by route.

Every route of every service API (as its own create_app builds it) is asked of the real running
process without the token, with a wrong one and with the right one; only OPEN_PATHS answer
without it. And an API told to listen beyond loopback with no token refuses to start.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.routing import Route

from broadcast_service.api import create_app as broadcast_app
from broadcast_service.config import BroadcastSettings
from crm_shared.runtime.config import PlatformSettings, ServiceSettings
from crm_shared.runtime.http import OPEN_PATHS, REQUEST_ID_HEADER
from interaction_service.api import create_app as interaction_app
from interaction_service.config import InteractionSettings
from profile_service.api import create_app as profile_app
from profile_service.config import ProfileSettings
from recommendation_service.api import create_app as recommendation_app
from recommendation_service.config import RecommendationSettings
from tests.integration.helpers import service_auth

pytestmark = pytest.mark.integration

# service -> (its app factory, its settings)
SERVICE_APIS: dict[str, tuple[Callable[[Any], FastAPI], type[ServiceSettings]]] = {
    "profile": (profile_app, ProfileSettings),
    "interaction": (interaction_app, InteractionSettings),
    "broadcast": (broadcast_app, BroadcastSettings),
    "recommendation": (recommendation_app, RecommendationSettings),
}
# The decision (docs/decisions.md): only the probe and the Prometheus endpoint stay open.
DECIDED_OPEN_PATHS = {"/healthz", "/metrics"}
# A value for every path parameter the services' routes have; a new one must be added here.
SAMPLE_PATH_VALUES = {
    "customer_id": "C-auth-sample",
    "system": "loyalty_card",
    "value": "card-auth-sample",
    "product_id": "85123A",
    "request_id": "1",
    "segment": "big-spenders",
    "case_id": "K-auth-sample",
    "department": "support",
    "campaign_id": "spring-auth-sample",
    "message_id": "m-auth-sample",
}
PATH_PARAMETER = re.compile(r"{(\w+)(?::\w+)?}")


def _routes(service: str) -> Iterator[tuple[str, str]]:
    """(method, concrete path) for every route of the service's app, path parameters filled."""
    factory, settings = SERVICE_APIS[service]
    token = SecretStr("only-to-build-the-app-0123456789")
    app = factory(settings(platform=PlatformSettings(service_token=token)))
    for route in app.routes:
        assert isinstance(route, Route), f"{service}: unexpected route type {route!r}"
        path = PATH_PARAMETER.sub(lambda m: SAMPLE_PATH_VALUES[m.group(1)], route.path)
        for method in sorted(route.methods or ()):
            yield method, path


def _base_url(platform: dict[str, str], service: str) -> str:
    return f"http://127.0.0.1:{platform[f'CRM_{service.upper()}_API_PORT']}"


def test_the_open_paths_are_exactly_the_decided_ones() -> None:
    assert set(OPEN_PATHS) == DECIDED_OPEN_PATHS


@pytest.mark.parametrize("service", SERVICE_APIS)
async def test_every_route_but_the_open_ones_needs_the_service_token(
    platform: dict[str, str], service: str
) -> None:
    routes = list(_routes(service))
    answered_without_token: set[str] = set()
    guarded: list[str] = []
    async with httpx.AsyncClient(base_url=_base_url(platform, service), timeout=10) as client:
        for method, path in routes:
            anonymous = await client.request(method, path, headers={REQUEST_ID_HEADER: "auth-1"})
            wrong = await client.request(
                method, path, headers={"Authorization": "Bearer not-the-service-token-at-all"}
            )
            admitted = await client.request(method, path, headers=service_auth(platform))
            where = f"{service} {method} {path}"
            assert admitted.status_code != 401 and admitted.status_code < 500, (
                where,
                admitted.status_code,
                admitted.text[:300],
            )
            if anonymous.status_code != 401:
                answered_without_token.add(path)
                continue
            guarded.append(path)
            assert wrong.status_code == 401, where
            assert anonymous.headers["WWW-Authenticate"].startswith("Bearer"), where
            assert anonymous.headers[REQUEST_ID_HEADER] == "auth-1", where
            if method != "HEAD":
                error = anonymous.json()["error"]
                assert error["status"] == 401, where
                assert error["request_id"] == "auth-1", where
                assert "service token" in error["message"], where
                assert "not the one" in wrong.json()["error"]["message"], where
    assert answered_without_token == DECIDED_OPEN_PATHS
    assert "/openapi.json" in guarded and "/docs" in guarded


@pytest.mark.parametrize("service", SERVICE_APIS)
async def test_an_unknown_path_says_nothing_without_the_token(
    platform: dict[str, str], service: str
) -> None:
    async with httpx.AsyncClient(base_url=_base_url(platform, service), timeout=10) as client:
        assert (await client.get("/no/such/route")).status_code == 401
        admitted = await client.get("/no/such/route", headers=service_auth(platform))
        assert admitted.status_code == 404


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("service", SERVICE_APIS)
def test_an_exposed_api_without_a_token_refuses_to_start(service: str) -> None:
    prefix = f"CRM_{service.upper()}_"
    env = {k: v for k, v in os.environ.items() if k != "CRM_SERVICE_TOKEN"}
    env |= {f"{prefix}API_HOST": "0.0.0.0", f"{prefix}API_PORT": str(_free_port())}
    result = subprocess.run(
        [sys.executable, "-m", f"{service}_service.api"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "without a service token" in result.stderr
    assert "CRM_SERVICE_TOKEN" in result.stderr
