"""The gateway's routes to cases. Reads (scope cases:read): a customer's cases, one case with its
history and figures, and the department view; the interaction service's answers are passed on as
they are. Writes (scope cases:write) are commands: opening a case and each later step (assign,
transfer, escalate, resolve, reopen, close) becomes its crm.case.*.v1 event on crm.cases, keyed by
the customer, validated as the worker will validate it; the answer is 202 with the event's and
the case's ids. Whether the step is allowed by the case's status is the worker's to say: a step
it refuses stays in the case's history as rejected, with the reason.

Mounted by gateway_service.api's create_app, whose guards and types it shares.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field

from crm_shared.contracts.events import (
    CASE_ASSIGNED,
    CASE_CLOSED,
    CASE_ESCALATED,
    CASE_OPENED,
    CASE_REOPENED,
    CASE_RESOLVED,
    CASE_TRANSFERRED,
    CaseAssigned,
    CaseClosed,
    CaseEscalated,
    CaseId,
    CaseOpened,
    CaseReopened,
    CaseResolved,
    CaseTransferred,
)
from gateway_service.api import GUARDED, CustomerIdPath, errors, require
from gateway_service.auth import CASES_READ, CASES_WRITE, StoredKey
from gateway_service.commands import publish_command
from gateway_service.passthrough import passed_on
from gateway_service.upstream import customer_path

CasesReader = Annotated[StoredKey, Depends(require(CASES_READ))]
CasesWriter = Annotated[StoredKey, Depends(require(CASES_WRITE))]
CaseIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]
DepartmentPath = Annotated[str, Path(min_length=1, max_length=80, pattern=r"^[a-z0-9_.-]+$")]
AtQuery = Annotated[
    datetime | None,
    Query(
        description="When to measure handling time and backlog age, with a UTC offset (default now)"
    ),
]
UPSTREAM = (502, 503, 504)

router = APIRouter()


async def _from_interaction(
    request: Request, part: str, path: str, at: datetime | None
) -> Response:
    """The interaction service's answer as it is (200, 404, 422); 502/503/504 when it fails."""
    params: dict[str, Any] = {} if at is None else {"at": at.isoformat()}
    return await passed_on(request, "interaction", part, path, params)


@router.get(
    "/v1/customers/{customer_id}/cases",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_customer_cases(
    customer_id: CustomerIdPath, request: Request, _key: CasesReader, at: AtQuery = None
) -> Response:
    """The customer's requests, questions and complaints with their figures, newest first."""
    path = customer_path("/customers/{customer_id}/cases", customer_id)
    return await _from_interaction(request, "customer_cases", path, at)


@router.get(
    "/v1/cases/{case_id}",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_case(
    case_id: CaseIdPath, request: Request, _key: CasesReader, at: AtQuery = None
) -> Response:
    """One case: status, SLA deadlines and breaches, figures (transfers, reopens, first-contact
    resolution, handling time and cost) and every step."""
    return await _from_interaction(request, "case", f"/cases/{case_id}", at)


@router.get(
    "/v1/departments", response_model=list[dict[str, Any]], responses=errors(*GUARDED, *UPSTREAM)
)
async def get_departments(request: Request, _key: CasesReader) -> Response:
    """Every department that held a case: cases, open cases and SLA breaches."""
    return await _from_interaction(request, "departments", "/departments", None)


@router.get(
    "/v1/departments/{department}",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_department(
    department: DepartmentPath, request: Request, _key: CasesReader, at: AtQuery = None
) -> Response:
    """A department's open cases, backlog age, SLA breaches and workload per employee."""
    return await _from_interaction(request, "department", f"/departments/{department}", at)


# ----------------------------------------------------------------------------- commands


class CaseOpening(CaseOpened):
    """A new case; without case_id the gateway makes one."""

    case_id: CaseId | None = Field(  # type: ignore[assignment]
        default=None, description="Unique across customers; default: a UUID made by the gateway"
    )


class _CaseInPath(BaseModel):
    """A step names its case in the path: the body need not repeat it, and may not name another."""

    case_id: CaseId | None = Field(default=None, description="The path's case id, if repeated")


class CaseAssignment(_CaseInPath, CaseAssigned):
    """An employee of a department takes the case."""


class CaseTransfer(_CaseInPath, CaseTransferred):
    """The case moves to another employee or department (a queue when no employee is named)."""


class CaseEscalation(_CaseInPath, CaseEscalated):
    """The case goes up a level."""


class CaseResolution(_CaseInPath, CaseResolved):
    """The customer's matter is settled."""


class CaseReopening(_CaseInPath, CaseReopened):
    """A resolved case comes back."""


class CaseClosing(_CaseInPath, CaseClosed):
    """The case is filed for good."""


class CaseCommandAccepted(BaseModel):
    case_id: str
    customer_id: str
    event_id: str
    type: str = Field(description="The event type published on crm.cases")
    status: str = "accepted"


async def _publish_step(
    request: Request,
    key: StoredKey,
    event_type: str,
    customer_id: str,
    case_id: str,
    step: BaseModel,
) -> CaseCommandAccepted:
    """Publish one case step about the customer, naming the case; 422 when the body names
    another case than the path."""
    data = step.model_dump(mode="json", exclude_none=True)
    if data.setdefault("case_id", case_id) != case_id:
        raise HTTPException(
            422, f"the body names case {data['case_id']!r}, the path case {case_id!r}"
        )
    source = f"gateway:{key.key_id}"
    event_id = await publish_command(request, event_type, customer_id, data, source)
    return CaseCommandAccepted(
        case_id=case_id, customer_id=customer_id, event_id=event_id, type=event_type
    )


COMMAND_ERRORS = errors(*GUARDED, 400, 503)


@router.post(
    "/v1/customers/{customer_id}/cases",
    status_code=202,
    response_model=CaseCommandAccepted,
    responses=COMMAND_ERRORS,
)
async def open_case(
    customer_id: CustomerIdPath, opening: CaseOpening, request: Request, key: CasesWriter
) -> CaseCommandAccepted:
    """Open a request, question or complaint: kind, priority, topic, channel, department, and
    optionally the employee, the contact and the order it concerns."""
    case_id = opening.case_id or str(uuid.uuid4())
    return await _publish_step(request, key, CASE_OPENED, customer_id, case_id, opening)


@router.post(
    "/v1/customers/{customer_id}/cases/{case_id}/assign",
    status_code=202,
    response_model=CaseCommandAccepted,
    responses=COMMAND_ERRORS,
)
async def assign_case(
    customer_id: CustomerIdPath,
    case_id: CaseIdPath,
    assignment: CaseAssignment,
    request: Request,
    key: CasesWriter,
) -> CaseCommandAccepted:
    """Assign the case to an employee of a department (its first response when it is the
    first)."""
    return await _publish_step(request, key, CASE_ASSIGNED, customer_id, case_id, assignment)


@router.post(
    "/v1/customers/{customer_id}/cases/{case_id}/transfer",
    status_code=202,
    response_model=CaseCommandAccepted,
    responses=COMMAND_ERRORS,
)
async def transfer_case(
    customer_id: CustomerIdPath,
    case_id: CaseIdPath,
    transfer: CaseTransfer,
    request: Request,
    key: CasesWriter,
) -> CaseCommandAccepted:
    """Transfer the case from one employee or department to another, with the reason."""
    return await _publish_step(request, key, CASE_TRANSFERRED, customer_id, case_id, transfer)


@router.post(
    "/v1/customers/{customer_id}/cases/{case_id}/escalate",
    status_code=202,
    response_model=CaseCommandAccepted,
    responses=COMMAND_ERRORS,
)
async def escalate_case(
    customer_id: CustomerIdPath,
    case_id: CaseIdPath,
    escalation: CaseEscalation,
    request: Request,
    key: CasesWriter,
) -> CaseCommandAccepted:
    """Escalate the case to a level (1-10), with the reason."""
    return await _publish_step(request, key, CASE_ESCALATED, customer_id, case_id, escalation)


@router.post(
    "/v1/customers/{customer_id}/cases/{case_id}/resolve",
    status_code=202,
    response_model=CaseCommandAccepted,
    responses=COMMAND_ERRORS,
)
async def resolve_case(
    customer_id: CustomerIdPath,
    case_id: CaseIdPath,
    resolution: CaseResolution,
    request: Request,
    key: CasesWriter,
) -> CaseCommandAccepted:
    """Resolve the case, saying how (and, if known, whether in the first contact)."""
    return await _publish_step(request, key, CASE_RESOLVED, customer_id, case_id, resolution)


@router.post(
    "/v1/customers/{customer_id}/cases/{case_id}/reopen",
    status_code=202,
    response_model=CaseCommandAccepted,
    responses=COMMAND_ERRORS,
)
async def reopen_case(
    customer_id: CustomerIdPath,
    case_id: CaseIdPath,
    reopening: CaseReopening,
    request: Request,
    key: CasesWriter,
) -> CaseCommandAccepted:
    """Reopen a resolved case, with the reason."""
    return await _publish_step(request, key, CASE_REOPENED, customer_id, case_id, reopening)


@router.post(
    "/v1/customers/{customer_id}/cases/{case_id}/close",
    status_code=202,
    response_model=CaseCommandAccepted,
    responses=COMMAND_ERRORS,
)
async def close_case(
    customer_id: CustomerIdPath,
    case_id: CaseIdPath,
    request: Request,
    key: CasesWriter,
    closing: Annotated[CaseClosing | None, Body()] = None,
) -> CaseCommandAccepted:
    """Close the case for good; it takes no more steps."""
    step = closing if closing is not None else CaseClosing()
    return await _publish_step(request, key, CASE_CLOSED, customer_id, case_id, step)
