"""The gateway's routes to the voice of the customer and the journey in the interaction service
(scope experience:read): a customer's ratings and journey, and across customers the trends,
the experience dimensions and the journey stage counts. The service's answers are passed on as
they are; the gateway checks the parameters first, so that its document says what is valid.
Recording a customer's feedback (scope experience:write) is a command: it publishes
crm.feedback.given.v2 on crm.contacts, validated as the worker will validate it, and answers 202.

Mounted by gateway_service.api's create_app, whose guards and types it shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from crm_shared.contracts.events import FEEDBACK_GIVEN_V2, FeedbackGivenV2, TouchpointName
from gateway_service.api import GUARDED, CustomerIdPath, errors, require
from gateway_service.auth import EXPERIENCE_READ, EXPERIENCE_WRITE, StoredKey
from gateway_service.commands import publish_command
from gateway_service.passthrough import passed_on
from gateway_service.profile_reads import UPSTREAM
from gateway_service.upstream import customer_path

ExperienceReader = Annotated[StoredKey, Depends(require(EXPERIENCE_READ))]
ExperienceWriter = Annotated[StoredKey, Depends(require(EXPERIENCE_WRITE))]

router = APIRouter()


async def _from_interaction(
    request: Request, part: str, path: str, params: Mapping[str, Any] | None = None
) -> Response:
    return await passed_on(request, "interaction", part, path, params)


@router.get(
    "/v1/customers/{customer_id}/feedback",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_feedback(
    customer_id: CustomerIdPath,
    request: Request,
    _key: ExperienceReader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """The customer's CSAT, NPS and effort scores, newest first, with what each rates, and the
    figures over them."""
    path = customer_path("/customers/{customer_id}/feedback", customer_id)
    return await _from_interaction(request, "feedback", path, {"limit": limit})


@router.get(
    "/v1/customers/{customer_id}/journey",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_journey(
    customer_id: CustomerIdPath, request: Request, _key: ExperienceReader
) -> Response:
    """The customer's journey stage and time in it by the clock, every stage change, and the
    moments of truth with the satisfaction that followed each."""
    path = customer_path("/customers/{customer_id}/journey", customer_id)
    return await _from_interaction(request, "journey", path)


@router.get(
    "/v1/experience/trends",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 422, *UPSTREAM),
)
async def get_trends(
    request: Request,
    _key: ExperienceReader,
    by: Literal["touchpoint", "department", "channel"] = "touchpoint",
    period: Literal["day", "week", "month"] = "month",
    since: Annotated[datetime | None, Query(description="Ratings from this time on")] = None,
    until: Annotated[datetime | None, Query(description="Ratings before this time")] = None,
) -> Response:
    """NPS, mean CSAT and mean effort per touchpoint, department or channel and per period."""
    params: dict[str, Any] = {"by": by, "period": period}
    params.update({k: v.isoformat() for k, v in (("since", since), ("until", until)) if v})
    return await _from_interaction(request, "experience_trends", "/experience/trends", params)


@router.get(
    "/v1/experience/dimensions",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, *UPSTREAM),
)
async def get_dimensions(
    request: Request,
    _key: ExperienceReader,
    touchpoint: Annotated[TouchpointName | None, Query()] = None,
) -> Response:
    """Per touchpoint, the mean score of each experience dimension and of the functional and
    emotional ones together."""
    params = {"touchpoint": touchpoint} if touchpoint else {}
    return await _from_interaction(
        request, "experience_dimensions", "/experience/dimensions", params
    )


@router.get(
    "/v1/journey/stages",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, *UPSTREAM),
)
async def get_stage_counts(request: Request, _key: ExperienceReader) -> Response:
    """How many customers are in each journey stage."""
    return await _from_interaction(request, "journey_stages", "/journey/stages")


class FeedbackAccepted(BaseModel):
    event_id: str
    type: str
    customer_id: str


@router.post(
    "/v1/customers/{customer_id}/feedback",
    status_code=202,
    response_model=FeedbackAccepted,
    responses=errors(*GUARDED, 400, 503),
)
async def give_feedback(
    customer_id: CustomerIdPath, feedback: FeedbackGivenV2, request: Request, key: ExperienceWriter
) -> FeedbackAccepted:
    """Record the customer's CSAT (1-5), NPS (0-10) or effort (1-7) score at a touchpoint, with
    what it rates, praise, a complaint or a suggestion, and dimension scores."""
    data = feedback.model_dump(mode="json", exclude_none=True)
    source = f"gateway:{key.key_id}"
    event_id = await publish_command(request, FEEDBACK_GIVEN_V2, customer_id, data, source)
    return FeedbackAccepted(event_id=event_id, type=FEEDBACK_GIVEN_V2, customer_id=customer_id)
