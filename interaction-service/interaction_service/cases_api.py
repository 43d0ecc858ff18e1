"""Case read routes of the interaction API: a customer's cases, one case with its history and
figures, and the department view (open cases, backlog age, SLA breaches, workload).

Figures that grow while a case is handled (handling time, cost, backlog age) are measured at
`at`, by default now; the cost rates are read from CRM_CASES_* when the API starts.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Response
from pydantic import BaseModel, Field

from crm_shared.contracts.events import CaseKind, CasePriority
from crm_shared.runtime.http import connection, model_response
from interaction_service import cases, store
from interaction_service.case_settings import CaseSettings

Conn = Annotated[asyncpg.Connection, Depends(connection)]
CustomerIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]
CaseIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@+-]+$")]
DepartmentPath = Annotated[str, Path(min_length=1, max_length=80, pattern=r"^[a-z0-9_.-]+$")]
AtQuery = Annotated[
    datetime | None,
    Query(description="When to measure handling time and backlog age (ISO 8601); default now"),
]


class Handling(BaseModel):
    department: str
    employee_id: str | None = Field(description="null: in the department's queue")
    seconds: float


class CaseFigures(BaseModel):
    transfers: int
    agent_transfers: int = Field(description="Transfers to another employee, same department")
    department_transfers: int
    reopens: int
    escalations: int
    escalation_level: int
    first_contact_resolution: bool | None = Field(
        description="Resolved without transfer, escalation or reopening; null until resolved"
    )
    repeat_of: str | None = Field(
        description="The customer's earlier case on the same topic within the repeat window"
    )
    handling_seconds: float = Field(description="Time open or assigned (up to `at` if still)")
    resolution_seconds: float | None = Field(description="From opening to the last resolution")
    handling: list[Handling] = Field(description="Per department and employee, in that order")
    cost: Decimal = Field(description="Handling hours times each department's hourly rate")
    first_response_breached: bool
    resolution_breached: bool


class CaseView(BaseModel):
    case_id: str
    customer_id: str
    kind: CaseKind
    priority: CasePriority
    topic: str
    channel: str
    status: Literal["open", "assigned", "resolved", "closed"]
    department: str
    employee_id: str | None
    opened_at: datetime
    first_response_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    first_response_due: datetime
    resolution_due: datetime
    resolution: str | None
    contact_id: str | None
    order_id: str | None
    figures: CaseFigures


class CaseStepView(BaseModel):
    source: str
    event_id: str
    occurred_at: datetime
    step: str
    accepted: bool
    reason: str | None = Field(description="Why a rejected step was not applied")
    details: dict[str, Any]


class CaseDetail(CaseView):
    history: list[CaseStepView] = Field(description="Every step, in event-time order")


class CustomerCases(BaseModel):
    customer_id: str
    cases: list[CaseView] = Field(description="Newest first")
    open_cases: int
    repeat_contacts: int = Field(description="Cases that repeat an earlier one's topic")


class EmployeeWorkload(BaseModel):
    employee_id: str | None = Field(description="null: the department's queue")
    open_cases: int


class DepartmentView(BaseModel):
    department: str
    at: datetime
    open_cases: int
    open_by_priority: dict[str, int]
    oldest_open_seconds: float | None
    median_open_seconds: float | None
    sla_breaches: dict[str, int] = Field(description="Targets missed while it held the case")
    workload: list[EmployeeWorkload] = Field(description="Most open cases first")


class DepartmentSummary(BaseModel):
    department: str
    cases: int = Field(description="Cases it holds now, whatever their status")
    open_cases: int
    sla_breaches: int


def _moment(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    if at.tzinfo is None:
        raise HTTPException(422, "at must carry a UTC offset, e.g. 2024-05-01T10:00:00Z")
    return at


def install(app: FastAPI, settings: CaseSettings | None = None) -> None:
    """Add the case routes to the interaction API."""
    settings = settings or CaseSettings()
    rates, default_rate = settings.cost_per_hour, settings.default_cost_per_hour

    def view(case: cases.Case, at: datetime) -> dict[str, Any]:
        handling = cases.handling_by(case, lambda s: (s.department, s.employee_id), at)
        figures = CaseFigures(
            transfers=case.transfers,
            agent_transfers=case.agent_transfers,
            department_transfers=case.department_transfers,
            reopens=case.reopens,
            escalations=case.escalations,
            escalation_level=case.escalation_level,
            first_contact_resolution=case.first_contact_resolution,
            repeat_of=case.repeat_of,
            handling_seconds=case.handling_seconds(at),
            resolution_seconds=case.resolution_seconds(),
            handling=[
                Handling(department=department, employee_id=employee, seconds=seconds)
                for (department, employee), seconds in sorted(
                    handling.items(), key=lambda item: (item[0][0], item[0][1] or "")
                )
            ],
            cost=cases.cost_of_handling(case, rates, default_rate, at),
            first_response_breached=case.first_response_breached,
            resolution_breached=case.resolution_breached,
        )
        fields = {name: getattr(case, name) for name in CaseView.model_fields if name != "figures"}
        return fields | {"figures": figures}

    @app.get("/customers/{customer_id}/cases", response_model=CustomerCases)
    async def get_customer_cases(
        customer_id: CustomerIdPath, conn: Conn, at: AtQuery = None
    ) -> Response:
        """The customer's cases with their figures, newest first."""
        moment = _moment(at)
        found = await store.customer_cases(conn, customer_id)
        if not found:
            raise HTTPException(404, f"customer {customer_id!r} has no cases")
        return model_response(
            CustomerCases(
                customer_id=customer_id,
                cases=[CaseView(**view(case, moment)) for case in found],
                open_cases=sum(case.status in cases.ACTIVE for case in found),
                repeat_contacts=sum(case.repeat_of is not None for case in found),
            )
        )

    @app.get("/cases/{case_id}", response_model=CaseDetail)
    async def get_case(case_id: CaseIdPath, conn: Conn, at: AtQuery = None) -> Response:
        """One case: its state, figures and every step (rejected ones with the reason)."""
        found = await store.case_with_history(conn, case_id)
        if found is None:
            raise HTTPException(404, f"no case {case_id!r} was opened")
        case, history = found
        return model_response(CaseDetail(**view(case, _moment(at)), history=history))

    @app.get("/departments", response_model=list[DepartmentSummary])
    async def get_departments(conn: Conn) -> list[DepartmentSummary]:
        """Every department that held a case: cases, open cases and SLA breaches."""
        return [DepartmentSummary(**row) for row in await store.department_totals(conn)]

    @app.get("/departments/{department}", response_model=DepartmentView)
    async def get_department(
        department: DepartmentPath, conn: Conn, at: AtQuery = None
    ) -> Response:
        """A department's open cases, backlog age, SLA breaches and workload per employee."""
        moment = _moment(at)
        held = await store.department_cases(conn, department)
        breaches = await store.department_breaches(conn, department)
        if not held and not breaches and not await store.department_known(conn, department):
            raise HTTPException(404, f"department {department!r} never held a case")
        backlog = cases.backlog([case.opened_at for case in held], moment)
        workload = Counter(case.employee_id for case in held)
        return model_response(
            DepartmentView(
                department=department,
                at=moment,
                open_cases=backlog.open_cases,
                open_by_priority=dict(Counter(case.priority for case in held)),
                oldest_open_seconds=backlog.oldest_seconds,
                median_open_seconds=backlog.median_seconds,
                sla_breaches=breaches,
                workload=[
                    EmployeeWorkload(employee_id=employee, open_cases=count)
                    for employee, count in sorted(
                        workload.items(), key=lambda item: (-item[1], item[0] or "")
                    )
                ],
            )
        )
