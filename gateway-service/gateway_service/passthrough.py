"""A service's answer passed on by the gateway as it is: the routes that only guard and relay
(profile_reads, recommendation_reads) share this, so they count and explain failures alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException, Request, Response

from gateway_service import metrics
from gateway_service.upstream import Services, UpstreamFailure

JSON = "application/json"
PASSED_ON = frozenset({200, 202, 404, 422})
"""What a service answers that the caller gets as it is: the rest is the service failing."""


async def passed_on(
    request: Request,
    service: str,
    part: str,
    path: str,
    params: Mapping[str, Any] | None = None,
    method: str = "GET",
    content: bytes | None = None,
) -> Response:
    """The service's answer as it is (200, 202, 404, 422), counted under `part`; 503/504 when
    it cannot be asked, 502 when it fails."""
    services: Services = request.app.state.services
    try:
        answer = await services.send(
            method, service, path, params or {}, request.state.request_id, content
        )
    except UpstreamFailure as failure:
        metrics.UPSTREAM_REQUESTS.labels(part, failure.outcome.label).inc()
        raise HTTPException(
            504 if failure.outcome.label == "timeout" else 503,
            f"the {service} service cannot give the {part} now ({failure}); try again later",
        ) from None
    found = answer.status in PASSED_ON
    metrics.UPSTREAM_REQUESTS.labels(part, "found" if found else "error").inc()
    if found:
        return Response(answer.content, status_code=answer.status, media_type=JSON)
    raise HTTPException(
        502, f"the {service} service failed to give the {part} (HTTP {answer.status})"
    )
