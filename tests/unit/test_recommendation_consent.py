"""Consent to personalisation in the recommendation service (pure): which events are decisions,
which one wins, what each state allows; and the list each customer is served and published."""

from __future__ import annotations

import json
from typing import Any

import pytest

from crm_shared.contracts.events import (
    RECOMMENDATIONS_REFRESHED,
    ConsentState,
    RecommendationsRefreshed,
)
from recommendation_service.consent import (
    PersonalisationDefault,
    latest_decisions,
    personalisation_allowed,
)
from recommendation_service.published import (
    NEW_PRODUCT_REASON,
    NEW_PRODUCTS,
    PUBLISHED_PICKS,
    Publication,
    ServedList,
    changed_lists,
    refreshed_event,
    served_list,
)
from tests.unit.events_factory import at, event


def _recorded(customer: str, state: str, minutes: float, **extra: Any) -> Any:
    data = {"purpose": "personalisation", "state": state, "capture_method": "web_form", **extra}
    return event("crm.consent.recorded.v2", customer, data, minutes=minutes)


def test_v2_and_v1_personalisation_decisions_are_folded_and_other_purposes_ignored() -> None:
    events = [
        _recorded("A", "granted", 1),
        event("crm.consent.revoked.v1", "B", {"purpose": " Personalization "}, minutes=1),
        event("crm.consent.granted.v1", "C", {"purpose": "personalisation"}, minutes=1),
        event("crm.consent.revoked.v1", "D", {"purpose": "marketing"}, minutes=1),
        event(
            "crm.consent.recorded.v2",
            "E",
            {"purpose": "marketing", "state": "revoked", "capture_method": "api"},
        ),
        event("crm.product.viewed.v1", "F", {"product_id": "JAM"}),
    ]
    found = latest_decisions(events)
    assert {customer: d.state for customer, d in found.items()} == {
        "A": ConsentState.GRANTED,
        "B": ConsentState.REVOKED,
        "C": ConsentState.GRANTED,
    }


def test_the_latest_decision_wins_whatever_the_batch_order_and_whatever_the_channel() -> None:
    later = _recorded("A", "revoked", 5, channel="email")
    earlier = _recorded("A", "granted", 2)
    assert latest_decisions([later, earlier])["A"].state is ConsentState.REVOKED
    assert latest_decisions([earlier, later])["A"].state is ConsentState.REVOKED
    assert latest_decisions([later, earlier])["A"].decided_at == at(5)


@pytest.mark.parametrize(
    ("state", "default", "allowed"),
    [
        (ConsentState.GRANTED, PersonalisationDefault.REFUSED, True),
        (ConsentState.REVOKED, PersonalisationDefault.ALLOWED, False),
        (ConsentState.DENIED, PersonalisationDefault.ALLOWED, False),
        (ConsentState.PENDING, PersonalisationDefault.ALLOWED, False),
        (None, PersonalisationDefault.ALLOWED, True),
        (None, PersonalisationDefault.REFUSED, False),
    ],
)
def test_only_granted_consent_allows_personalisation_and_silence_takes_the_default(
    state: ConsentState | None, default: PersonalisationDefault, allowed: bool
) -> None:
    assert personalisation_allowed(state, default) is allowed


def _pick(product: str) -> dict[str, Any]:
    text = "bought together with JAM"
    return {
        "product_id": product,
        "description": product.lower(),
        "score": 0.5,
        "reason": {"kind": "bought-together", "product_id": "JAM", "text": text},
    }


POPULAR = [
    {"product_id": p, "description": p.lower(), "buyers": 10 - n}
    for n, p in enumerate(["JAM", "TEA", "MUG", "CUP"])
]
NEWEST = [
    {"product_id": p, "description": None, "buyers": 1}
    for p in ["NEW1", "JAM", "NEW2", "NEW3", "NEW4", "NEW5", "NEW6"]
]
NEWEST_IDS = [row["product_id"] for row in NEWEST]


def test_a_consenting_customer_gets_their_personal_picks_and_new_products_they_did_not_buy() -> (
    None
):
    served = served_list([_pick("TEA")], True, {"JAM"}, POPULAR, NEWEST)
    assert served.personalised and served.picks == [_pick("TEA")]
    assert [row["product_id"] for row in served.new_products] == [
        "NEW1",
        "NEW2",
        "NEW3",
        "NEW4",
        "NEW5",
    ]


def test_a_consenting_customer_the_model_has_nothing_for_gets_popular_goods_not_bought() -> None:
    served = served_list([], True, {"JAM"}, POPULAR, NEWEST)
    assert not served.personalised
    assert [pick["product_id"] for pick in served.picks] == ["TEA", "MUG", "CUP"]
    assert {pick["reason"]["kind"] for pick in served.picks} == {"popular"}


def test_without_consent_nothing_of_the_customers_is_used_not_even_what_they_bought() -> None:
    served = served_list([_pick("TEA")], False, {"JAM"}, POPULAR, NEWEST)
    assert not served.personalised
    assert [pick["product_id"] for pick in served.picks] == ["JAM", "TEA", "MUG", "CUP"]
    assert [row["product_id"] for row in served.new_products] == NEWEST_IDS[:NEW_PRODUCTS]


def test_a_list_is_published_again_only_when_what_it_names_changes() -> None:
    mine = served_list([_pick("TEA"), _pick("MUG")], True, set(), POPULAR, NEWEST)
    rescored = ServedList(True, [{**pick, "score": 0.9} for pick in mine.picks], mine.new_products)
    reordered = ServedList(True, mine.picks[::-1], mine.new_products)
    refused = served_list([], False, set(), POPULAR, NEWEST)
    stored = {"ME": (3, mine.signature())}
    assert changed_lists(stored, {"ME": rescored}) == []
    assert changed_lists(stored, {"ME": reordered}) == [Publication("ME", 4, reordered)]
    assert changed_lists(stored, {"ME": refused, "NEW": mine}) == [
        Publication("ME", 4, refused),
        Publication("NEW", 1, mine),
    ]
    long = ServedList(True, [_pick(f"P{n}") for n in range(PUBLISHED_PICKS + 5)], [])
    beyond = ServedList(True, [*long.picks[:PUBLISHED_PICKS], _pick("OTHER")], [])
    assert changed_lists({"ME": (1, long.signature())}, {"ME": beyond}) == []


def test_the_published_event_carries_the_top_k_new_products_consent_and_versions() -> None:
    long = ServedList(True, [_pick(f"P{n}") for n in range(PUBLISHED_PICKS + 5)], NEWEST[:2])
    derived = refreshed_event(Publication("ME", 7, long), 3, at(0))
    assert (derived.topic, derived.key, derived.type) == (
        "crm.recommendations",
        b"ME",
        RECOMMENDATIONS_REFRESHED,
    )
    document = json.loads(derived.value)
    assert document["source"] == "recommendation-service" and document["id"] == derived.event_id
    data = RecommendationsRefreshed.model_validate(document["data"])
    assert [p.product_id for p in data.picks] == [f"P{n}" for n in range(PUBLISHED_PICKS)]
    assert data.picks[0].reason == "bought together with JAM"
    assert [(p.product_id, p.reason) for p in data.new_products] == [
        ("NEW1", NEW_PRODUCT_REASON),
        ("JAM", NEW_PRODUCT_REASON),
    ]
    assert (data.personalised, data.model_version, data.version) == (True, 3, 7)
    assert refreshed_event(Publication("ME", 7, long), 4, at(1)).event_id == derived.event_id
    assert refreshed_event(Publication("ME", 8, long), 3, at(0)).event_id != derived.event_id
