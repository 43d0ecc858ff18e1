"""The gateway's routes to the profile service's lifetime value and churn: a customer's figures
with their reasons (scope customers:read), the model in use (analytics:read), and a request to
fit it again (analytics:write; the profile worker fits in the background). The service's answers
are passed on as they are.

Mounted by gateway_service.api's create_app, whose guards and types it shares.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from gateway_service import metrics
from gateway_service.api import GUARDED, JSON, CustomerIdPath, CustomersReader, errors, require
from gateway_service.auth import ANALYTICS_WRITE, StoredKey
from gateway_service.profile_reads import UPSTREAM, AnalyticsReader, _from_profile
from gateway_service.upstream import Services, UpstreamFailure, customer_path

AnalyticsWriter = Annotated[StoredKey, Depends(require(ANALYTICS_WRITE))]

router = APIRouter()


@router.get(
    "/v1/customers/{customer_id}/lifetime-value",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_lifetime_value(
    customer_id: CustomerIdPath, request: Request, _key: CustomersReader
) -> Response:
    """Probability alive, expected purchases and lifetime value over the model's horizon, per
    currency, each with its reason, and the model's version and fit date."""
    path = customer_path("/customers/{customer_id}/lifetime-value", customer_id)
    return await _from_profile(request, "lifetime_value", path)


@router.get(
    "/v1/analytics/lifetime-value/model",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_lifetime_model(request: Request, _key: AnalyticsReader) -> Response:
    """The lifetime-value model in use: version, fit date and parameters per currency."""
    return await _from_profile(request, "lifetime_model", "/analytics/lifetime-value/model")


@router.post(
    "/v1/analytics/lifetime-value/refits",
    response_model=dict[str, Any],
    status_code=202,
    responses=errors(*GUARDED, *UPSTREAM),
)
async def request_lifetime_refit(request: Request, _key: AnalyticsWriter) -> Response:
    """Ask for the lifetime-value model to be fitted again now; it is fitted in the background
    and swapped in (the model's `version` moves, `pending_refits` returns to 0)."""
    services: Services = request.app.state.services
    try:
        answer = await services.send(
            "POST", "profile", "/analytics/lifetime-value/refits", {}, request.state.request_id
        )
    except UpstreamFailure as failure:
        metrics.UPSTREAM_REQUESTS.labels("lifetime_refit", failure.outcome.label).inc()
        raise HTTPException(
            504 if failure.outcome.label == "timeout" else 503,
            f"the profile service cannot take a refit request now ({failure}); try again later",
        ) from None
    accepted = answer.status == 202
    metrics.UPSTREAM_REQUESTS.labels("lifetime_refit", "found" if accepted else "error").inc()
    if not accepted:
        raise HTTPException(
            502, f"the profile service refused the refit request (HTTP {answer.status})"
        )
    return Response(answer.content, status_code=202, media_type=JSON)
