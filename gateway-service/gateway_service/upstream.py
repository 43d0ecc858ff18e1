"""Calls from the gateway to the services' APIs, over one long-lived httpx transport.

Every call has a deadline, forwards the request id, and ends in a composition outcome; no
exception of a service's making reaches the gateway's handlers.

httpx sends its requests through aiohttp (httpx-aiohttp's transport): measured on this machine
with 20 calls in flight, httpx's own connection pool cost 5.3 to 5.8 ms of CPU per call (it
asks every idle pooled connection, through anyio, whether its socket is readable), httpx over
aiohttp 0.8 to 1.0 ms, a bare aiohttp session 0.4 ms. The gateway makes four calls per customer
360 (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from pydantic import ValidationError

from crm_shared.contracts.json_objects import object_reader
from crm_shared.runtime.http import REQUEST_ID_HEADER, service_token_headers
from gateway_service import metrics
from gateway_service.composition import (
    CALLS,
    Failed,
    Outcome,
    Part,
    answer_label,
    from_response,
    outcomes_of,
    timed_out,
    unavailable,
)
from gateway_service.config import GatewaySettings


@dataclass(frozen=True)
class Answer:
    """A service's HTTP answer, read whole."""

    status: int
    content: bytes


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
    """The services behind one transport, its connections kept alive, for as long as the context
    lasts."""

    def session() -> aiohttp.ClientSession:  # made on the first call, inside the event loop
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=settings.upstream_connections)
        )

    async with AiohttpTransport(client=session) as transport:
        yield Services(
            transport,
            base_urls(settings),
            settings.upstream_timeout_seconds,
            service_token_headers(settings.platform.service_token),
        )


class Services:
    """The four services behind the gateway, as seen from one replica.

    Requests go straight to the httpx transport (httpx's public transport API) rather than
    through `httpx.AsyncClient`: the client's per-request work (merging the URL, its query and
    the headers, the auth and redirect flows, the cookie jar) cost more CPU than the call itself,
    for nothing this gateway uses (docs/decisions.md)."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        base_urls: Mapping[str, str],
        timeout: float,
        headers: Mapping[str, str],
    ) -> None:
        self._transport = transport
        self._base_urls = base_urls
        self._timeout = timeout
        self._headers = dict(headers)
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }

    async def get(
        self, service: str, path: str, params: Mapping[str, Any], request_id: str
    ) -> Answer:
        """GET a service's path; UpstreamFailure when it does not answer in time or at all."""
        return await self.send("GET", service, path, params, request_id)

    async def send(
        self,
        method: str,
        service: str,
        path: str,
        params: Mapping[str, Any],
        request_id: str,
        content: bytes | None = None,
    ) -> Answer:
        """Call a service's path (GET, or a POST that asks for work, with a JSON body or none);
        UpstreamFailure when it does not answer in time or at all."""
        url = self._base_urls[service] + path
        if params:
            url += "?" + urlencode(query_pairs(params))
        headers = {**self._headers, REQUEST_ID_HEADER: request_id}
        if content is not None:
            headers["Content-Type"] = "application/json"
        request = httpx.Request(
            method, url, headers=headers, content=content, extensions=self._extensions
        )
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._transport.handle_async_request(request)
                try:
                    return Answer(response.status_code, await _content(response))
                finally:
                    await response.aclose()
        except (httpx.TransportError, aiohttp.ClientError, OSError) as error:  # timeouts included
            if _timed_out(error):
                raise UpstreamFailure(timed_out(self._timeout)) from None
            raise UpstreamFailure(unavailable(_why(error))) from None

    async def parts(
        self, parts: tuple[Part, ...], customer_id: str, request_id: str
    ) -> dict[str, Outcome]:
        """The parts of the customer 360 one call answers, each counted by outcome."""
        call = parts[0]
        answer: Outcome
        try:
            response = await self.get(
                call.service, customer_path(call.path, customer_id), call.params, request_id
            )
            answer = from_response(response.status, json_body(response.content), response.content)
        except UpstreamFailure as failure:
            answer = failure.outcome
        outcomes = outcomes_of(parts, answer)
        for name, outcome in outcomes.items():
            metrics.UPSTREAM_REQUESTS.labels(name, outcome.label).inc()
        return outcomes

    async def timeline_page(
        self, customer_id: str, params: Mapping[str, Any], request_id: str
    ) -> tuple[Answer, bool]:
        """A page of the interaction service's timeline and whether it is a JSON object (the
        gateway passes its bytes on as they are), counted like a part."""
        path = customer_path("/customers/{customer_id}/timeline", customer_id)
        try:
            answer = await self.get("interaction", path, params, request_id)
        except UpstreamFailure as failure:
            metrics.UPSTREAM_REQUESTS.labels("timeline_page", failure.outcome.label).inc()
            raise
        whole = is_json_object(answer.content)
        metrics.UPSTREAM_REQUESTS.labels("timeline_page", answer_label(answer.status, whole)).inc()
        return answer, whole

    async def customer_360(self, customer_id: str, request_id: str) -> dict[str, Outcome]:
        """Every part of the 360, its calls made in parallel; each part's outcome by part name."""
        answers = await asyncio.gather(
            *(self.parts(parts, customer_id, request_id) for parts in CALLS)
        )
        return {name: outcome for outcomes in answers for name, outcome in outcomes.items()}


def query_pairs(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Query parameters as name-value pairs; a list value repeats its name (kind=a&kind=b)."""
    return tuple(
        (name, str(item))
        for name, value in params.items()
        for item in (value if isinstance(value, list | tuple) else (value,))
    )


async def _content(response: httpx.Response) -> bytes:
    """The answer's bytes, read straight from the transport's stream: `aread` passes every chunk
    through a decoder and a re-chunker, about a tenth of a call's CPU. The services send their
    bodies unencoded; an encoded one (not expected) still goes through `aread` to be decoded."""
    if "content-encoding" in response.headers or not isinstance(
        response.stream, httpx.AsyncByteStream
    ):
        return await response.aread()
    return b"".join([chunk async for chunk in response.stream])


_CHECK_OBJECT = object_reader()


def is_json_object(content: bytes) -> bool:
    """Whether the bytes are one JSON object, checked without building it."""
    try:
        _CHECK_OBJECT(content)
    except ValidationError:
        return False
    return True


def json_body(content: bytes) -> Any:
    """The decoded body, or None when it is not JSON (the outcome is then an error)."""
    try:
        return json.loads(content)
    except ValueError:  # UnicodeDecodeError included
        return None


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what caused it, outermost first."""
    causes: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(causes) < 10:
        causes.append(current)
        current = current.__cause__ or current.__context__
    return causes


def _timed_out(error: BaseException) -> bool:
    """Whether the service was too slow, not unreachable: httpx-aiohttp reports a refused
    connection as a ConnectTimeout, so the root cause decides."""
    causes = _causes(error)
    if any(isinstance(cause, aiohttp.ClientConnectorError | ConnectionError) for cause in causes):
        return False
    return isinstance(error, TimeoutError | httpx.TimeoutException)


def _why(error: BaseException) -> str:
    """A short reason for a transport failure, from the root cause when there is one."""
    causes = _causes(error)
    if any(
        isinstance(cause, ConnectionRefusedError)
        or (isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED)
        for cause in causes
    ):
        return "connection refused"
    if any(
        isinstance(cause, socket.gaierror | aiohttp.ClientConnectorDNSError) for cause in causes
    ):
        return "unknown host"
    for cause in causes:  # httpx's error wraps aiohttp's
        if isinstance(cause, aiohttp.ClientConnectorError):
            return f"cannot connect ({cause})"
        if isinstance(cause, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
            return "the connection was closed mid-answer"
    return str(error) or type(error).__name__
