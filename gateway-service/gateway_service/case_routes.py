"""The gateway's routes to cases (scope cases:read): a customer's cases, one case with its history
and figures, and the department view. The interaction service's answers are passed on as they
are. Cases are opened and moved by publishing their steps (crm.cases), e.g. through
POST /v1/events with events:write.

Mounted by gateway_service.api's create_app, whose guards and types it shares.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from gateway_service.api import GUARDED, CustomerIdPath, errors, require
from gateway_service.auth import CASES_READ, StoredKey
from gateway_service.passthrough import passed_on
from gateway_service.upstream import customer_path

CasesReader = Annotated[StoredKey, Depends(require(CASES_READ))]
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
