"""Cases replay exactly: the seeded scenario and a rejected step, with crm.cases ticks, folded by
the interaction worker's projection through the BatchProjector on real PostgreSQL (no Kafka),
give the same cases, history, breaches and derived events whatever the batch boundaries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_shared.contracts.events import CLOCK_SUBJECT, build_event
from interaction_service.worker import PROJECTION
from tests import case_scenario as scenario
from tests.component.partition_logs import folded_in_batches, interleaved

pytestmark = pytest.mark.component

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def _step(customer: str, n: int, after: timedelta, event_type: str, data: Any) -> dict[str, Any]:
    return build_event(
        event_type,
        customer,
        data,
        source="call-centre",
        time=T0 + after,
        event_id=f"{customer}-{n}",
    )


def _tick(partition: int, after: timedelta) -> dict[str, Any]:
    at = T0 + after
    return build_event(
        "crm.clock.ticked.v1",
        CLOCK_SUBJECT,
        {"topic": "crm.cases", "partition": partition},
        source="crm-clock",
        time=at,
        event_id=f"tick:{at.isoformat()}:crm.cases:{partition}",
    )


def _logs() -> dict[int, list[dict[str, Any]]]:
    """Partition 0: the scenario of customer A; partition 1: customer B's question, never
    assigned (its first response deadline passes at a tick), and a step on a closed case."""
    a = [
        *scenario.steps("K-A"),
        (scenario.TICK_AFTER, "tick", None),
        *scenario.final_steps("K-A"),
    ]
    log0 = [
        _tick(0, after) if kind == "tick" else _step("A", n, after, kind, data)
        for n, (after, kind, data) in enumerate(a)
    ]
    opened = {
        "case_id": "K-B",
        "kind": "question",
        "priority": "urgent",
        "topic": "opening hours",
        "channel": "chat",
        "department": "support",
    }
    log1 = [
        _step("B", 0, timedelta(0), "crm.case.opened.v1", opened),
        _tick(1, timedelta(hours=2)),  # urgent: first response due after 1 h
        _step("B", 1, timedelta(hours=3), "crm.case.closed.v1", {"case_id": "K-B"}),
        _step(
            "B", 2, timedelta(hours=4), "crm.case.reopened.v1", {"case_id": "K-B", "reason": "x"}
        ),
    ]
    return {0: log0, 1: log1}


async def _fold_in_batches_of(size: int) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    records = interleaved(_logs(), "crm.cases")
    async with folded_in_batches(PROJECTION, records, size) as pool:
        cases = await pool.fetch("SELECT * FROM cases ORDER BY case_id")
        steps = await pool.fetch("SELECT * FROM case_steps ORDER BY case_id, occurred_at")
        breaches = await pool.fetch("SELECT * FROM case_breaches ORDER BY case_id, target")
        outbox = await pool.fetch("SELECT topic, key, type, event_id, value FROM outbox")
        return (
            [dict(r) for r in cases],
            [dict(r) for r in steps],
            [dict(r) for r in breaches],
            sorted((r["topic"], r["key"], r["type"], r["event_id"], r["value"]) for r in outbox),
        )


async def test_cases_fold_the_same_whatever_the_batch_boundaries() -> None:
    cases, steps, breaches, outbox = await _fold_in_batches_of(1)
    by_id = {c["case_id"]: c for c in cases}
    a, b = by_id["K-A"], by_id["K-B"]
    assert (a["status"], a["transfers"], a["reopens"], a["resolution_breached"]) == (
        "closed",
        scenario.EXPECTED_TRANSFERS,
        scenario.EXPECTED_REOPENS,
        True,
    )
    assert (b["status"], b["first_response_breached"], b["partition"]) == ("closed", True, 1)
    assert [(s["step"], s["accepted"], s["reason"]) for s in steps if s["case_id"] == "K-B"] == [
        ("opened", True, None),
        ("closed", True, None),
        ("reopened", False, "only a resolved case can be reopened, this one is closed"),
    ]
    assert steps[0]["details"]["case_id"] == "K-A"  # the step's data, as a JSON object
    # K-B was closed at 3 h, before its 4 h resolution deadline: only its first response missed.
    assert [(r["case_id"], r["target"], r["department"]) for r in breaches] == [
        ("K-A", "resolution", "complaints"),
        ("K-B", "first_response", "support"),
    ]
    derived = [(topic, key, kind) for topic, key, kind, _, _ in outbox]
    assert sorted(derived) == sorted(
        [
            ("crm.case-signals", b"A", "crm.complaint.opened.v1"),
            ("crm.case-signals", b"A", "crm.complaint.closed.v1"),
            ("crm.case-signals", b"A", "crm.complaint.opened.v1"),
            ("crm.case-signals", b"A", "crm.case.sla_breached.v1"),
            ("crm.case-signals", b"A", "crm.complaint.closed.v1"),
            ("crm.case-signals", b"B", "crm.case.sla_breached.v1"),
        ]
    )
    breach_of_b = next(
        json.loads(value) for _, key, kind, _, value in outbox if key == b"B" and "sla" in kind
    )
    assert breach_of_b["time"] == (T0 + timedelta(hours=1)).isoformat()
    for size in (3, 7, 100):
        assert await _fold_in_batches_of(size) == (cases, steps, breaches, outbox), size
