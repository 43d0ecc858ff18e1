"""The synthetic demo facts: deterministic, valid, inside each customer's window, varied enough."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_shared.contracts.events import CASE_STEP_TYPES, Measure, validate_event
from crm_shared.ops.demo import event_order
from crm_shared.ops.demo.synthetic import AFTER_LAST_SEEN, SOURCE, generate
from interaction_service import cases
from interaction_service.case_fold import sla_policy

T0 = datetime(2010, 12, 1, 8, 26, tzinfo=UTC)
CUSTOMERS = [
    (str(12_000 + n), T0 + timedelta(days=n), T0 + timedelta(days=n + (n * 37) % 300))
    for n in range(300)
]
PRODUCTS = ["85123A", "22423", "85099B", "84879", "47566", "20725", "22720", "POST"]


@pytest.fixture(scope="module")
def documents() -> list[dict[str, Any]]:
    return generate(CUSTOMERS, PRODUCTS, seed=7)


def test_same_seed_same_events_other_seed_other_events(documents: list[dict[str, Any]]) -> None:
    assert generate(CUSTOMERS, PRODUCTS, seed=7) == documents
    assert generate(CUSTOMERS, PRODUCTS, seed=8) != documents


def test_a_customer_gets_the_same_facts_when_loaded_alone(documents: list[dict[str, Any]]) -> None:
    alone = generate(CUSTOMERS[5:6], PRODUCTS, seed=7)
    assert alone == [d for d in documents if d["subject"] == CUSTOMERS[5][0]]


def test_every_event_is_valid_with_a_unique_deterministic_id(
    documents: list[dict[str, Any]],
) -> None:
    for document in documents:
        event = validate_event(document)
        assert event.source == SOURCE
        assert event.id.startswith("demo-")
        assert event.customer_id in event.id
    assert len({d["id"] for d in documents}) == len(documents)


def test_events_lie_in_the_customer_window_and_are_in_publishing_order(
    documents: list[dict[str, Any]],
) -> None:
    windows = {customer: (first, last) for customer, first, last in CUSTOMERS}
    for document in documents:
        first, last = windows[document["subject"]]
        assert first <= datetime.fromisoformat(document["time"]) <= last + AFTER_LAST_SEEN
    keys = [event_order(d) for d in documents]
    assert keys == sorted(keys)


def test_counts_per_customer_are_in_the_documented_ranges(documents: list[dict[str, Any]]) -> None:
    per_customer: dict[str, Counter[str]] = defaultdict(Counter)
    for document in documents:
        per_customer[document["subject"]][document["type"]] += 1
    assert len(per_customer) == len(CUSTOMERS)
    for counts in per_customer.values():
        assert counts["crm.channel_preference.set.v2"] == 1
        assert 1 <= counts["crm.consent.recorded.v2"] <= 9
        assert counts["crm.contact.logged.v1"] <= 6
        assert counts["crm.feedback.given.v1"] <= 3
        assert counts["crm.product.viewed.v1"] <= 15


def test_the_facts_cover_what_the_services_must_handle(documents: list[dict[str, Any]]) -> None:
    contacts = [d["data"] for d in documents if d["type"] == "crm.contact.logged.v1"]
    assert {"refused", "escalated", "resolved"} <= {c["outcome"] for c in contacts}
    assert {c["department"] for c in contacts} == {"sales", "support", "service", "billing"}
    assert {c["direction"] for c in contacts} == {"inbound", "outbound"}
    feedback = [d["data"] for d in documents if d["type"] == "crm.feedback.given.v1"]
    assert {f["score"] for f in feedback} == {1, 2, 3, 4, 5}
    assert {f["kind"] for f in feedback} == {"praise", "complaint", "suggestion", "comment"}
    assert all(f["kind"] != "praise" for f in feedback if f["score"] <= 2)
    setups = [d["data"] for d in documents if d["type"] == "crm.channel_preference.set.v2"]
    channels = [c for setup in setups for c in setup["channels"]]
    assert all(c["address"] for c in channels)
    assert any(c.get("quiet_hours") for c in channels)
    assert any(not c.get("quiet_hours") for c in channels)
    assert any(c.get("max_per_week") for c in channels)
    consents = [d["data"] for d in documents if d["type"] == "crm.consent.recorded.v2"]
    assert {c["purpose"] for c in consents} == {"marketing", "service", "personalisation"}
    assert {c["state"] for c in consents} == {"granted", "revoked"}
    assert "double_opt_in" in {c["capture_method"] for c in consents}
    views = [d["data"] for d in documents if d["type"] == "crm.product.viewed.v1"]
    assert {v["product_id"] for v in views} <= set(PRODUCTS)
    popularity = Counter(v["product_id"] for v in views)
    assert popularity[PRODUCTS[0]] > popularity[PRODUCTS[-1]]


def test_a_revocation_follows_its_grant(documents: list[dict[str, Any]]) -> None:
    granted: dict[tuple[str, str], datetime] = {}
    revoked = []
    for document in documents:
        if document["type"] != "crm.consent.recorded.v2":
            continue
        key = (document["subject"], document["data"]["purpose"])
        if document["data"]["state"] == "granted":
            granted[key] = max(granted.get(key, datetime.min.replace(tzinfo=UTC)), _at(document))
        else:
            revoked.append((key, _at(document)))
    assert revoked
    for key, when in revoked:
        assert granted[key] <= when


def _at(document: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(document["time"])


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="product"):
        generate(CUSTOMERS[:1], [], seed=7)
    with pytest.raises(ValueError, match="last seen before first seen"):
        generate([("1", T0, T0 - timedelta(days=1))], PRODUCTS, seed=7)


def test_demo_cases_run_through_every_step_and_the_case_fold_accepts_them_all(
    documents: list[dict[str, Any]],
) -> None:
    steps = [validate_event(d) for d in documents if d["type"] in CASE_STEP_TYPES]
    assert {s.type for s in steps} == CASE_STEP_TYPES
    folded = cases.fold_steps({}, [], steps, sla_policy())
    assert [r.reason for r in folded.steps if not r.accepted] == []
    statuses = Counter(case.status for case in folded.cases.values())
    assert set(statuses) == {"open", "assigned", "resolved", "closed"}
    assert any(case.department_transfers for case in folded.cases.values())
    assert any(case.reopens for case in folded.cases.values())


def test_demo_scores_rate_resolved_cases_on_their_scales(documents: list[dict[str, Any]]) -> None:
    resolved = {d["data"]["case_id"] for d in documents if d["type"] == "crm.case.resolved.v1"}
    scores = [validate_event(d).data for d in documents if d["type"] == "crm.feedback.given.v2"]
    assert {s.measure for s in scores} == {Measure.NPS, Measure.CSAT, Measure.CES}  # type: ignore[union-attr]
    rated = {s.about.id for s in scores if s.about is not None}  # type: ignore[union-attr]
    assert rated == resolved
    assert any(s.dimensions for s in scores)  # type: ignore[union-attr]
