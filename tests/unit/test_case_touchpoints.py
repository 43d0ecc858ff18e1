"""Every case step is a touchpoint of kind "case" on the customer's timeline, with its channel,
department, employee and outcome (the step) as structured columns."""

from __future__ import annotations

import pytest

from crm_shared.contracts.events import CASE_STEP_TYPES
from crm_shared.contracts.timeline import TIMELINE_EVENT_TYPES, TIMELINE_KINDS
from interaction_service.events import FOLDS
from interaction_service.projection import summary_deltas, timeline_entry
from tests.unit.events_factory import event

OPENED = {
    "case_id": "K-1",
    "kind": "complaint",
    "priority": "high",
    "topic": "broken parcel",
    "channel": "phone",
    "department": "support",
    "employee_id": "E1",
}


@pytest.mark.parametrize(
    ("event_type", "data", "columns"),
    [
        (
            "crm.case.opened.v1",
            OPENED,
            (
                "phone",
                "inbound",
                "support",
                "E1",
                "broken parcel",
                "opened",
                "complaint K-1 opened (high) for E1 in support: broken parcel",
            ),
        ),
        (
            "crm.case.opened.v1",
            {**OPENED, "employee_id": None, "kind": "question", "priority": "low"},
            (
                "phone",
                "inbound",
                "support",
                None,
                "broken parcel",
                "opened",
                "question K-1 opened (low) for the support queue: broken parcel",
            ),
        ),
        (
            "crm.case.assigned.v1",
            {"case_id": "K-1", "employee_id": "E2", "department": "support"},
            (None, None, "support", "E2", None, "assigned", "case K-1 assigned to E2 in support"),
        ),
        (
            "crm.case.transferred.v1",
            {
                "case_id": "K-1",
                "from_employee_id": "E2",
                "from_department": "support",
                "to_department": "after-sales",
                "reason": " needs a replacement ",
            },
            (
                None,
                None,
                "after-sales",
                None,
                None,
                "transferred",
                "case K-1 transferred from E2 in support to the after-sales queue "
                "(needs a replacement)",
            ),
        ),
        (
            "crm.case.escalated.v1",
            {"case_id": "K-1", "level": 2, "reason": "angry"},
            (None, None, None, None, None, "escalated", "case K-1 escalated to level 2 (angry)"),
        ),
        (
            "crm.case.resolved.v1",
            {"case_id": "K-1", "resolution": "replacement sent", "first_contact": True},
            (
                None,
                None,
                None,
                None,
                None,
                "resolved",
                "case K-1 resolved in the first contact: replacement sent",
            ),
        ),
        (
            "crm.case.reopened.v1",
            {"case_id": "K-1", "reason": "broken again"},
            (None, None, None, None, None, "reopened", "case K-1 reopened (broken again)"),
        ),
        (
            "crm.case.closed.v1",
            {"case_id": "K-1"},
            (None, None, None, None, None, "closed", "case K-1 closed"),
        ),
        (
            "crm.case.closed.v1",
            {"case_id": "K-1", "reason": "no answer"},
            (None, None, None, None, None, "closed", "case K-1 closed (no answer)"),
        ),
    ],
)
def test_each_case_step_is_a_case_touchpoint_with_its_columns(
    event_type: str, data: dict[str, object], columns: tuple[object, ...]
) -> None:
    entry = timeline_entry(event(event_type, "C1", data))
    assert entry.kind == "case"
    assert entry.event_type == event_type
    assert (
        entry.channel,
        entry.direction,
        entry.department,
        entry.employee_id,
        entry.topic,
        entry.outcome,
        entry.summary,
    ) == columns


def test_every_case_step_type_is_a_timeline_type_the_worker_folds() -> None:
    assert "case" in TIMELINE_KINDS
    assert CASE_STEP_TYPES <= TIMELINE_EVENT_TYPES <= FOLDS


def test_case_steps_count_as_touchpoints_but_not_as_contacts() -> None:
    steps = [
        event("crm.case.opened.v1", "C1", OPENED, minutes=0),
        event("crm.case.resolved.v1", "C1", {"case_id": "K-1", "resolution": "ok"}, minutes=30),
    ]
    totals = summary_deltas(steps)["C1"]
    assert (totals.touchpoints, totals.contacts, totals.complaints) == (2, 0, 0)
    assert (totals.first_touchpoint_at, totals.last_touchpoint_at) == (
        steps[0].time,
        steps[1].time,
    )
