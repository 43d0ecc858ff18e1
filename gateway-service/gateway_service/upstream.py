"""Calls from the gateway to the services' APIs, over one long-lived httpx client per service.

Every call has a deadline, forwards the request id, and ends in a composition outcome; no
exception of a service's making reaches the gateway's handlers.

One client (one connection pool) per service, with as many kept-alive connections as it may open:
httpcore scans every connection of a pool (a poll() on each idle one) twice per request, and
closes idle connections whenever the pool holds more than its keep-alive limit, so one pool for
all four services, or a keep-alive limit below the connection limit, costs CPU on every call.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx

from crm_shared.runtime.http import REQUEST_ID_HEADER, service_token_headers
from gateway_service import metrics
from gateway_service.composition import (
    PARTS,
    Failed,
    Outcome,
    Part,
    from_response,
    timed_out,
    unavailable,
)
from gateway_service.config import GatewaySettings


class UpstreamFailure(Exception):
    """A service could not be asked (down, too slow): `outcome` says how."""

    def __init__(self, outcome: Failed) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


def customer_path(template: str, customer_id: str) -> str:
    return template.format(customer_id=quote(customer_id, safe=""))


def base_urls(settings: GatewaySettings) -> dict[str, str]:
    return {
        "profile": settings.profile_url.rstrip("/"),
        "interaction": settings.interaction_url.rstrip("/"),
        "broadcast": settings.broadcast_url.rstrip("/"),
        "recommendation": settings.recommendation_url.rstrip("/"),
    }


@asynccontextmanager
async def connect(settings: GatewaySettings) -> AsyncIterator[Services]:
    """The services, each behind a client of its own, for as long as the context lasts."""
    limits = httpx.Limits(
        max_connections=settings.upstream_connections,
        max_keepalive_connections=settings.upstream_connections,
    )
    async with AsyncExitStack() as stack:
        clients = {
            service: await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=url,
                    headers=service_token_headers(settings.platform.service_token),
                    timeout=settings.upstream_timeout_seconds,
                    limits=limits,
                )
            )
            for service, url in base_urls(settings).items()
        }
        yield Services(clients, settings.upstream_timeout_seconds)


class Services:
    """The four services behind the gateway, as seen from one replica."""

    def __init__(self, clients: Mapping[str, httpx.AsyncClient], timeout: float) -> None:
        self._clients = clients
        self._timeout = timeout

    async def get(
        self, service: str, path: str, params: Mapping[str, Any], request_id: str
    ) -> httpx.Response:
        """GET a service's path; UpstreamFailure when it does not answer in time or at all."""
        try:
            # The client's timeout bounds each phase (connect, read, ...); this bounds the whole.
            async with asyncio.timeout(self._timeout):
                return await self._clients[service].get(
                    path, params=params, headers={REQUEST_ID_HEADER: request_id}
                )
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamFailure(timed_out(self._timeout)) from None
        except httpx.TransportError as error:
            raise UpstreamFailure(unavailable(_why(error))) from None

    async def part(self, part: Part, customer_id: str, request_id: str) -> Outcome:
        """One part of the customer 360, counted by outcome."""
        outcome: Outcome
        try:
            response = await self.get(
                part.service, customer_path(part.path, customer_id), part.params, request_id
            )
            outcome = from_response(response.status_code, json_body(response), response.content)
        except UpstreamFailure as failure:
            outcome = failure.outcome
        metrics.UPSTREAM_REQUESTS.labels(part.name, outcome.label).inc()
        return outcome

    async def timeline_page(
        self, customer_id: str, params: Mapping[str, Any], request_id: str
    ) -> tuple[httpx.Response, Any]:
        """A page of the interaction service's timeline and its decoded body (None when it is not
        JSON), counted like a part."""
        path = customer_path("/customers/{customer_id}/timeline", customer_id)
        try:
            response = await self.get("interaction", path, params, request_id)
        except UpstreamFailure as failure:
            metrics.UPSTREAM_REQUESTS.labels("timeline_page", failure.outcome.label).inc()
            raise
        body = json_body(response)
        outcome = from_response(response.status_code, body)
        metrics.UPSTREAM_REQUESTS.labels("timeline_page", outcome.label).inc()
        return response, body

    async def customer_360(self, customer_id: str, request_id: str) -> dict[str, Outcome]:
        """Every part of the 360, asked in parallel; each part's outcome by part name."""
        outcomes = await asyncio.gather(
            *(self.part(part, customer_id, request_id) for part in PARTS)
        )
        return {part.name: outcome for part, outcome in zip(PARTS, outcomes, strict=True)}


def json_body(response: httpx.Response) -> Any:
    """The decoded body, or None when it is not JSON (the outcome is then an error)."""
    try:
        return json.loads(response.content)
    except ValueError:  # UnicodeDecodeError included
        return None


def _why(error: httpx.TransportError) -> str:
    """A short reason for a transport failure, from the root cause when there is one."""
    causes: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(causes) < 10:
        causes.append(current)
        current = current.__cause__ or current.__context__
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return "connection refused"
    if any(isinstance(cause, socket.gaierror) for cause in causes):
        return "unknown host"
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect ({error})"
    if isinstance(error, httpx.RemoteProtocolError):
        return "the connection was closed mid-answer"
    return str(error) or type(error).__name__
