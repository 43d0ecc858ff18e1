"""The seeded case scenario of issue 8, shared by the unit and the integration tests: a high
priority complaint, opened with an agent, transferred three times (once between agents, twice
between departments), resolved, reopened, missing its 24 h resolution target (a tick passes it),
resolved again and closed, followed by a feedback score of 1.

Its figures, with the default SLA targets and the rates below, are known exactly.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

HOUR = timedelta(hours=1)

CASE_RATES = {"billing": Decimal(45)}
"""Cost per hour of billing; the other departments cost the default 30 an hour."""


def steps(case_id: str) -> list[tuple[timedelta, str, dict[str, Any]]]:
    """(time after opening, event type, data) of the case's steps, in log order."""
    return [
        (
            timedelta(0),
            "crm.case.opened.v1",
            {
                "case_id": case_id,
                "kind": "complaint",
                "priority": "high",
                "topic": "Refund not received",
                "channel": "phone",
                "department": "support",
                "employee_id": "E-1",
            },
        ),
        (
            1 * HOUR,
            "crm.case.transferred.v1",
            {
                "case_id": case_id,
                "from_employee_id": "E-1",
                "from_department": "support",
                "to_employee_id": "E-2",
                "to_department": "support",
                "reason": "shift ended",
            },
        ),
        (
            3 * HOUR,
            "crm.case.transferred.v1",
            {
                "case_id": case_id,
                "from_employee_id": "E-2",
                "from_department": "support",
                "to_employee_id": "E-3",
                "to_department": "billing",
                "reason": "refund question",
            },
        ),
        (
            5 * HOUR,
            "crm.case.transferred.v1",
            {
                "case_id": case_id,
                "from_employee_id": "E-3",
                "from_department": "billing",
                "to_employee_id": "E-4",
                "to_department": "complaints",
                "reason": "customer asked for a manager",
            },
        ),
        (
            8 * HOUR,
            "crm.case.resolved.v1",
            {"case_id": case_id, "resolution": "refund issued"},
        ),
        (
            20 * HOUR,
            "crm.case.reopened.v1",
            {"case_id": case_id, "reason": "refund still not received"},
        ),
    ]


RESOLUTION_DUE = 24 * HOUR
"""The resolution target of a high priority case (default settings)."""
TICK_AFTER = RESOLUTION_DUE + timedelta(seconds=1)
"""A clock tick of the case's partition at this time passes the resolution deadline. The test on
the running platform dates the deadline a little after its own now, so that the live clock's
ticks cannot pass it (nor any other) between the steps: only the tick it publishes does."""


def final_steps(case_id: str) -> list[tuple[timedelta, str, dict[str, Any]]]:
    """The steps after the tick."""
    return [
        (
            RESOLUTION_DUE + timedelta(seconds=30),
            "crm.case.resolved.v1",
            {"case_id": case_id, "resolution": "refund re-sent by bank transfer"},
        ),
        (RESOLUTION_DUE + timedelta(seconds=60), "crm.case.closed.v1", {"case_id": case_id}),
    ]


FEEDBACK_AFTER = RESOLUTION_DUE + timedelta(seconds=90)
FEEDBACK = {"score": 1, "kind": "complaint", "comment": "three people and still no refund"}

EXPECTED_TRANSFERS = 3
EXPECTED_AGENT_TRANSFERS = 1
EXPECTED_DEPARTMENT_TRANSFERS = 2
EXPECTED_REOPENS = 1
EXPECTED_HANDLING = 8 * HOUR + 4 * HOUR + timedelta(seconds=30)
"""Open from 0 to 8 h, and from the reopening at 20 h to the resolution at 24 h 30 s."""
EXPECTED_RESOLUTION = RESOLUTION_DUE + timedelta(seconds=30)
EXPECTED_BY_DEPARTMENT = {
    "support": 3 * HOUR,
    "billing": 2 * HOUR,
    "complaints": 7 * HOUR + timedelta(seconds=30),
}
EXPECTED_BY_EMPLOYEE = {
    "E-1": 1 * HOUR,
    "E-2": 2 * HOUR,
    "E-3": 2 * HOUR,
    "E-4": 7 * HOUR + timedelta(seconds=30),
}
EXPECTED_COST = Decimal("390.25")
"""support 3 h x 30 + billing 2 h x 45 + complaints (7 h 30 s) x 30."""
