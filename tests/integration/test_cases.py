"""Cases on the real broker and database: the seeded scenario of issue 8 (tests/case_scenario.py)
folded by the interaction worker, its figures read through the API and the gateway, its SLA
breach driven by a published clock tick, and its derived events on crm.case-signals.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer

from crm_shared.contracts.events import DETRACTOR_SCORED, build_event
from crm_shared.contracts.sdk import EventPublisher
from crm_shared.contracts.topics import CASE_SIGNALS, CASES
from crm_shared.runtime.clock import tick_records
from tests import case_scenario as scenario
from tests.integration.helpers import (
    create_api_key,
    eventually,
    experience_events,
    gateway_url,
    get_json,
    metric_value,
    read_topic,
    service_auth,
    unique,
)

pytestmark = pytest.mark.integration


def _publish(bootstrap: str, customer: str, t0: datetime, steps: list[Any], first: int = 0) -> None:
    """The steps as the call centre publishes them, their ids numbered from `first`."""
    with EventPublisher(bootstrap, source="call-centre") as publisher:
        for n, (after, event_type, data) in enumerate(steps, first):
            publisher.publish(
                event_type, customer, data, time=t0 + after, event_id=f"{customer}-{n}"
            )


def _tick(bootstrap: str, at: datetime) -> None:
    """A clock tick into every partition of crm.cases, as the platform's clock publishes it."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        partitions = len(producer.partitions_for(CASES.name) or ())
        for topic, partition, value in tick_records(at, {CASES.name: partitions}):
            producer.send(topic, value=value, key=b"clock", partition=partition)
        producer.flush()
    finally:
        producer.close()


BREACHES = 'crm_interaction_case_sla_breaches_total{priority="high",target="resolution"}'
OPEN_COMPLAINTS = 'crm_interaction_open_cases{department="complaints",priority="high"}'


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


async def test_the_seeded_complaint_scenario_gives_its_figures_exactly(
    platform: dict[str, str],
) -> None:
    bootstrap = platform["CRM_KAFKA_BOOTSTRAP"]
    customer, case_id = unique("case-customer"), unique("K")
    # The resolution deadline falls two minutes from now: the live clock cannot pass it while
    # the steps are folded, the tick below does (events may be dated up to 5 minutes ahead).
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2) - scenario.RESOLUTION_DUE
    _publish(bootstrap, customer, t0, scenario.steps(case_id))
    api = f"http://127.0.0.1:{platform['CRM_INTERACTION_API_PORT']}"
    auth = service_auth(platform)
    await eventually(
        lambda: get_json(f"{api}/cases/{case_id}", headers=auth),
        lambda r: r[0] == 200 and r[1]["figures"]["reopens"] == 1,
        what="the case to be reopened",
    )
    _, before_tick = await get_json(f"{api}/cases/{case_id}", headers=auth)
    assert not before_tick["figures"]["resolution_breached"]
    metrics_port = platform["CRM_INTERACTION_WORKER_METRICS_PORT"]
    breaches_before = await metric_value(metrics_port, BREACHES) or 0.0
    # The reopened case is handled by complaints: the gauge (set every 10 s) counts it.
    open_before = await eventually(
        lambda: metric_value(metrics_port, OPEN_COMPLAINTS),
        lambda value: (value or 0) >= 1,
        what="the open-cases gauge to count the reopened case",
    )

    _tick(bootstrap, t0 + scenario.TICK_AFTER)
    await eventually(
        lambda: get_json(f"{api}/cases/{case_id}", headers=auth),
        lambda r: r[1]["figures"]["resolution_breached"],
        what="the tick to breach the resolution target",
    )
    assert await metric_value(metrics_port, BREACHES) == breaches_before + 1
    first = len(scenario.steps(case_id))
    _publish(bootstrap, customer, t0, scenario.final_steps(case_id), first)
    with EventPublisher(bootstrap, source="survey-tool") as publisher:
        publisher.publish(
            "crm.feedback.given.v1",
            customer,
            {**scenario.FEEDBACK, "channel": "phone"},
            time=t0 + scenario.FEEDBACK_AFTER,
            event_id=f"{customer}-feedback",
        )
    _, case = await eventually(
        lambda: get_json(f"{api}/cases/{case_id}", headers=auth),
        lambda r: r[1]["status"] == "closed",
        what="the case to be closed",
    )
    await eventually(
        lambda: metric_value(metrics_port, OPEN_COMPLAINTS),
        lambda value: value == (open_before or 0) - 1,
        what="the open-cases gauge to drop the closed case",
    )

    figures = case["figures"]
    assert figures["transfers"] == scenario.EXPECTED_TRANSFERS
    assert figures["agent_transfers"] == scenario.EXPECTED_AGENT_TRANSFERS
    assert figures["department_transfers"] == scenario.EXPECTED_DEPARTMENT_TRANSFERS
    assert figures["reopens"] == scenario.EXPECTED_REOPENS
    assert figures["first_contact_resolution"] is False
    assert figures["handling_seconds"] == _seconds(scenario.EXPECTED_HANDLING)
    assert figures["resolution_seconds"] == _seconds(scenario.EXPECTED_RESOLUTION)
    assert figures["cost"] == str(scenario.EXPECTED_COST)
    assert figures["first_response_breached"] is False
    by_employee = {h["employee_id"]: h["seconds"] for h in figures["handling"]}
    assert by_employee == {e: _seconds(t) for e, t in scenario.EXPECTED_BY_EMPLOYEE.items()}
    assert [(s["step"], s["accepted"]) for s in case["history"]] == [
        ("opened", True),
        ("transferred", True),
        ("transferred", True),
        ("transferred", True),
        ("resolved", True),
        ("reopened", True),
        ("resolved", True),
        ("closed", True),
    ]

    signals = [
        json.loads(record.value)
        for record in read_topic(bootstrap, CASE_SIGNALS.name)
        if record.key == customer.encode()
    ]
    assert sorted((s["type"], s["time"]) for s in signals) == sorted(
        [
            ("crm.case.sla_breached.v1", (t0 + scenario.RESOLUTION_DUE).isoformat()),
            ("crm.complaint.closed.v1", (t0 + timedelta(hours=8)).isoformat()),
            ("crm.complaint.closed.v1", (t0 + scenario.EXPECTED_RESOLUTION).isoformat()),
            ("crm.complaint.opened.v1", t0.isoformat()),
            ("crm.complaint.opened.v1", (t0 + timedelta(hours=20)).isoformat()),
        ]
    )
    (breach,) = [s["data"] for s in signals if s["type"] == "crm.case.sla_breached.v1"]
    assert (breach["target"], breach["department"]) == ("resolution", "complaints")

    contacts = await eventually(
        lambda: get_json(f"{api}/customers/{customer}/summary", headers=auth),
        lambda r: r[0] == 200 and r[1]["complaints"] == 1,
        what="the feedback to reach the summary",
    )
    assert contacts[1]["average_satisfaction"] == 1.0
    # The score of 1 (a v1 feedback, read as CSAT) is a detractor's: one event, for this feedback.
    detractors = await eventually(
        lambda: experience_events(bootstrap, customer, DETRACTOR_SCORED),
        lambda found: len(found) >= 1,
        what="the detractor event on crm.experience",
    )
    assert [
        (e["source"], e["data"]["measure"], e["data"]["score"], e["data"]["feedback_id"])
        for e in {e["id"]: e for e in detractors}.values()
    ] == [("interaction-service", "csat", scenario.FEEDBACK["score"], f"{customer}-feedback")]

    # Through the gateway, with the cases:read scope, the same answer.
    key = create_api_key(platform, unique("cases-reader"), "cases:read")
    async with httpx.AsyncClient(
        base_url=gateway_url(platform), headers={"Authorization": f"Bearer {key}"}
    ) as client:
        through = await client.get(f"/v1/cases/{case_id}")
        assert through.status_code == 200
        assert through.json()["figures"] == figures
        mine = await client.get(f"/v1/customers/{customer}/cases")
        assert [c["case_id"] for c in mine.json()["cases"]] == [case_id]
        complaints = await client.get("/v1/departments/complaints")
        assert complaints.status_code == 200
        assert complaints.json()["sla_breaches"].get("resolution", 0) >= 1

    # A key without cases:read is refused every case read, and told which scope it lacks.
    other = create_api_key(platform, unique("customers-reader"), "customers:read")
    async with httpx.AsyncClient(
        base_url=gateway_url(platform), headers={"Authorization": f"Bearer {other}"}
    ) as client:
        for path in (
            f"/v1/cases/{case_id}",
            f"/v1/customers/{customer}/cases",
            "/v1/departments/complaints",
        ):
            refused = await client.get(path)
            assert refused.status_code == 403 and "cases:read" in refused.text, path


async def test_a_department_shows_open_cases_backlog_and_workload(
    platform: dict[str, str],
) -> None:
    department = unique("dept").lower()
    customer = unique("dept-customer")
    now = datetime.now(UTC).replace(microsecond=0)
    opened = [now - timedelta(hours=h) for h in (1, 2, 6)]
    steps: list[Any] = [
        (
            when - now,
            "crm.case.opened.v1",
            {
                "case_id": f"{customer}-{n}",
                "kind": "request",
                "priority": "low",
                "topic": f"request {n}",
                "channel": "email",
                "department": department,
                "employee_id": "E-7" if n < 2 else None,
            },
        )
        for n, when in enumerate(opened)
    ]
    # Opened through the gateway as events; a breach (derived by the platform) cannot be forged.
    documents = [
        build_event(
            t, customer, data, source="call-centre", time=now + after, event_id=f"{customer}-{n}"
        )
        for n, (after, t, data) in enumerate(steps)
    ]
    forged = build_event(
        "crm.case.sla_breached.v1",
        customer,
        {
            "case_id": f"{customer}-0",
            "target": "resolution",
            "priority": "low",
            "department": department,
            "due_at": now.isoformat(),
        },
        source="call-centre",
        time=now,
    )
    key = create_api_key(platform, unique("call-centre"), "events:write", "call-centre")
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as client:
        response = await client.post(
            "/v1/events",
            json={"events": [*documents, forged]},
            headers={"Authorization": f"Bearer {key}"},
        )
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (3, 1), body
    assert body["results"][3]["reason"] == (
        "crm.case.sla_breached.v1 is published by the platform itself, not through the gateway"
    )
    api = f"http://127.0.0.1:{platform['CRM_INTERACTION_API_PORT']}"
    auth = service_auth(platform)
    status, view = await eventually(
        lambda: get_json(
            f"{api}/departments/{department}", params={"at": now.isoformat()}, headers=auth
        ),
        lambda r: r[0] == 200 and r[1]["open_cases"] == 3,
        what="the department to hold three open cases",
    )
    assert view["oldest_open_seconds"] == 6 * 3600
    assert view["median_open_seconds"] == 2 * 3600
    assert view["open_by_priority"] == {"low": 3}
    assert view["workload"] == [
        {"employee_id": "E-7", "open_cases": 2},
        {"employee_id": None, "open_cases": 1},
    ]
    _, departments = await get_json(f"{api}/departments", headers=auth)
    assert {"department": department, "cases": 3, "open_cases": 3, "sla_breaches": 0} in (
        departments
    )
    status, _ = await get_json(f"{api}/departments/{unique('none').lower()}", headers=auth)
    assert status == 404
