"""The case state machine, SLA breaches and figures, as pure functions."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from crm_shared.contracts.events import Event
from interaction_service import cases
from interaction_service.case_settings import CaseSettings
from tests import case_scenario as scenario
from tests.unit.events_factory import T0, event

SETTINGS = CaseSettings()
POLICY = cases.SlaPolicy(
    SETTINGS.first_response_hours, SETTINGS.resolution_hours, SETTINGS.repeat_window
)
CUSTOMER = "C-case"


def step(
    after: timedelta, event_type: str, data: dict[str, Any], customer: str = CUSTOMER
) -> Event:
    return event(event_type, customer, data, minutes=after.total_seconds() / 60)


def tick(after: timedelta, partition: int = 0) -> Event:
    return event(
        "crm.clock.ticked.v1",
        "clock",
        {"topic": "crm.cases", "partition": partition},
        minutes=after.total_seconds() / 60,
        source="crm-clock",
    )


def opened(case_id: str, after: timedelta = timedelta(0), **changes: Any) -> Event:
    data = {
        "case_id": case_id,
        "kind": "question",
        "priority": "normal",
        "topic": "delivery",
        "channel": "chat",
        "department": "support",
    }
    return step(after, "crm.case.opened.v1", data | changes)


def fold(
    events: list[Event], stored: dict[str, cases.Case] | None = None
) -> tuple[dict[str, cases.Case], cases.Folded]:
    """Fold case steps, then the ticks after them, as the worker does run by run."""
    known = dict(stored or {})
    everything = cases.Folded()
    for event_ in events:
        if event_.type == "crm.clock.ticked.v1":
            folded = cases.fold_ticks(list(known.values()), [event_])
        else:
            openings = [
                cases.Opening(c.case_id, c.customer_id, c.topic, c.opened_at)
                for c in known.values()
            ]
            folded = cases.fold_steps(known, openings, [event_], POLICY)
        known.update(folded.cases)
        everything.steps.extend(folded.steps)
        everything.breaches.extend(folded.breaches)
        everything.derived.extend(folded.derived)
    return known, everything


def scenario_events(case_id: str) -> list[Event]:
    return [
        *(step(after, t, data) for after, t, data in scenario.steps(case_id)),
        tick(scenario.TICK_AFTER),
        *(step(after, t, data) for after, t, data in scenario.final_steps(case_id)),
    ]


def derived_documents(folded: cases.Folded) -> list[dict[str, Any]]:
    return [json.loads(d.value) for d in folded.derived]


def test_the_seeded_scenario_gives_its_figures_exactly() -> None:
    known, folded = fold(scenario_events("K-1"))
    case = known["K-1"]
    end = T0 + 30 * scenario.HOUR
    assert case.status == "closed"
    assert (case.transfers, case.agent_transfers, case.department_transfers) == (
        scenario.EXPECTED_TRANSFERS,
        scenario.EXPECTED_AGENT_TRANSFERS,
        scenario.EXPECTED_DEPARTMENT_TRANSFERS,
    )
    assert case.reopens == scenario.EXPECTED_REOPENS
    assert case.first_contact_resolution is False
    assert case.handling_seconds(end) == scenario.EXPECTED_HANDLING.total_seconds()
    by_department = cases.handling_by(case, lambda s: s.department, end)
    assert by_department == {
        d: t.total_seconds() for d, t in scenario.EXPECTED_BY_DEPARTMENT.items()
    }
    by_employee = cases.handling_by(case, lambda s: s.employee_id, end)
    assert by_employee == {e: t.total_seconds() for e, t in scenario.EXPECTED_BY_EMPLOYEE.items()}
    cost = cases.cost_of_handling(case, scenario.CASE_RATES, SETTINGS.default_cost_per_hour, end)
    assert cost == scenario.EXPECTED_COST
    assert case.resolution_seconds() == scenario.EXPECTED_RESOLUTION.total_seconds()
    assert [(b.target, b.due_at, b.department) for b in folded.breaches] == [
        ("resolution", T0 + scenario.RESOLUTION_DUE, "complaints")
    ]
    assert all(s.accepted for s in folded.steps)
    types = [d["type"] for d in derived_documents(folded)]
    assert types == [
        "crm.complaint.opened.v1",
        "crm.complaint.closed.v1",
        "crm.complaint.opened.v1",
        "crm.case.sla_breached.v1",
        "crm.complaint.closed.v1",
    ]


def test_a_question_resolved_at_once_is_a_first_contact_resolution() -> None:
    known, folded = fold(
        [
            opened("Q-1", employee_id="E-9"),
            step(
                timedelta(minutes=5), "crm.case.resolved.v1", {"case_id": "Q-1", "resolution": "ok"}
            ),
        ]
    )
    case = known["Q-1"]
    assert case.first_contact_resolution is True
    assert case.first_response_at == T0  # opened straight with an employee
    assert case.handling_seconds(T0) == 300
    assert folded.derived == []  # not a complaint


def test_the_resolvers_word_that_it_took_more_than_one_contact_counts() -> None:
    known, _ = fold(
        [
            opened("Q-2"),
            step(
                timedelta(hours=1),
                "crm.case.resolved.v1",
                {"case_id": "Q-2", "resolution": "called back", "first_contact": False},
            ),
        ]
    )
    assert known["Q-2"].first_contact_resolution is False


def test_an_escalation_raises_the_level_and_spoils_first_contact_resolution() -> None:
    known, _ = fold(
        [
            opened("Q-3"),
            step(
                timedelta(minutes=1),
                "crm.case.escalated.v1",
                {"case_id": "Q-3", "level": 2, "reason": "angry"},
            ),
            step(
                timedelta(minutes=2),
                "crm.case.escalated.v1",
                {"case_id": "Q-3", "level": 1, "reason": "again"},
            ),
            step(
                timedelta(minutes=3), "crm.case.resolved.v1", {"case_id": "Q-3", "resolution": "ok"}
            ),
        ]
    )
    case = known["Q-3"]
    assert (case.escalations, case.escalation_level) == (2, 2)
    assert case.first_contact_resolution is False


@pytest.mark.parametrize(
    ("steps", "rejected", "reason"),
    [
        (
            [("crm.case.closed.v1", {}), ("crm.case.resolved.v1", {"resolution": "x"})],
            "resolved",
            "cannot resolve a closed case",
        ),
        (
            [("crm.case.reopened.v1", {"reason": "x"})],
            "reopened",
            "only a resolved case can be reopened, this one is open",
        ),
        (
            [("crm.case.closed.v1", {}), ("crm.case.closed.v1", {})],
            "closed",
            "the case is already closed",
        ),
        (
            [
                (
                    "crm.case.opened.v1",
                    {"kind": "request", "topic": "t", "channel": "web", "department": "x"},
                )
            ],
            "opened",
            "case 'R-1' was opened before",
        ),
    ],
)
def test_a_step_not_allowed_is_kept_as_rejected_and_changes_nothing(
    steps: list[tuple[str, dict[str, Any]]], rejected: str, reason: str
) -> None:
    events = [opened("R-1")] + [
        step(timedelta(minutes=n + 1), t, {"case_id": "R-1"} | data)
        for n, (t, data) in enumerate(steps)
    ]
    before, _ = fold(events[:-1])
    after, folded = fold(events)
    assert after["R-1"] == before["R-1"]
    last = folded.steps[-1]
    assert (last.step, last.accepted, last.reason) == (rejected, False, reason)


def test_a_step_for_an_unknown_case_or_another_customer_is_rejected() -> None:
    known, folded = fold(
        [
            step(timedelta(0), "crm.case.closed.v1", {"case_id": "U-1"}),
            opened("U-2"),
            step(
                timedelta(minutes=1), "crm.case.closed.v1", {"case_id": "U-2"}, customer="C-other"
            ),
        ]
    )
    assert "U-1" not in known
    assert known["U-2"].status == "open"
    assert [s.reason for s in folded.steps] == [
        "case 'U-1' was never opened",
        None,
        "case 'U-2' belongs to another customer",
    ]


def test_a_tick_past_the_first_response_deadline_breaches_once() -> None:
    due = timedelta(hours=POLICY.first_response_hours["normal"])
    known, folded = fold(
        [
            opened("S-1"),
            tick(due),  # at the deadline: not yet missed
            tick(due + timedelta(minutes=1)),
            tick(due + timedelta(minutes=2)),
        ]
    )
    assert [(b.case_id, b.target, b.due_at) for b in folded.breaches] == [
        ("S-1", "first_response", T0 + due)
    ]
    assert known["S-1"].first_response_breached
    (document,) = derived_documents(folded)
    assert document["type"] == "crm.case.sla_breached.v1"
    assert document["time"] == (T0 + due).isoformat()
    assert document["data"]["target"] == "first_response"


def test_a_late_step_breaches_the_deadline_it_comes_after_even_without_a_tick() -> None:
    late = timedelta(hours=POLICY.first_response_hours["normal"] + 1)
    known, folded = fold(
        [
            opened("S-2"),
            step(
                late,
                "crm.case.assigned.v1",
                {"case_id": "S-2", "employee_id": "E", "department": "support"},
            ),
        ]
    )
    assert [b.target for b in folded.breaches] == ["first_response"]
    assert known["S-2"].first_response_at == T0 + late


def test_a_resolved_case_misses_no_deadline() -> None:
    _, folded = fold(
        [
            opened("S-3"),
            step(
                timedelta(minutes=1), "crm.case.resolved.v1", {"case_id": "S-3", "resolution": "ok"}
            ),
            tick(timedelta(days=30)),
        ]
    )
    assert folded.breaches == []


def test_breaches_derive_the_same_ids_when_folded_again() -> None:
    events = [opened("S-4"), tick(timedelta(days=10))]
    _, first = fold(events)
    _, again = fold(events)
    assert [d.event_id for d in first.derived] == [d.event_id for d in again.derived]
    assert len({d.event_id for d in first.derived}) == 2  # first response and resolution


def test_a_case_on_the_same_topic_within_the_window_is_a_repeat() -> None:
    window = POLICY.repeat_window
    known, _ = fold(
        [
            opened("P-1", topic="Delivery  delay"),
            opened("P-2", timedelta(days=1), topic="delivery delay"),
            opened("P-3", timedelta(days=2), topic="invoice"),
            opened("P-4", window + timedelta(hours=12), topic="delivery delay"),
            opened("P-5", 3 * window, topic="delivery delay"),
        ]
    )
    assert [known[c].repeat_of for c in ("P-1", "P-2", "P-3", "P-4", "P-5")] == [
        None,
        "P-1",
        None,
        "P-2",
        None,
    ]


def test_backlog_age_is_the_oldest_and_the_median() -> None:
    ages = [T0 - timedelta(hours=h) for h in (1, 2, 9)]
    assert cases.backlog(ages, T0) == cases.Backlog(3, 9 * 3600.0, 2 * 3600.0)
    assert cases.backlog([], T0) == cases.Backlog(0, None, None)


def test_cost_uses_each_departments_rate_or_the_default() -> None:
    known, _ = fold(
        [
            opened("M-1", department="billing"),
            step(
                timedelta(hours=2),
                "crm.case.transferred.v1",
                {
                    "case_id": "M-1",
                    "from_department": "billing",
                    "to_department": "legal",
                    "reason": "r",
                },
            ),
        ]
    )
    until = T0 + timedelta(hours=3)  # still open: the stint in legal counts up to now
    cost = cases.cost_of_handling(known["M-1"], {"billing": Decimal(45)}, Decimal(30), until)
    assert cost == Decimal("120.00")
