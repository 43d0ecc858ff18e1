"""The segment rule language: what validates, the errors of what does not, and what the Python
evaluator says of a customer's facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from crm_shared.contracts.events import InvalidEvent, build_event, encode_event, parse_event
from crm_shared.contracts.segment_rules import (
    MAX_RULE_NODES,
    RFM_SEGMENT_NAMES,
    is_time_dependent,
)
from profile_service import analytics, segments
from profile_service.segments import CustomerFacts, LineFact, OrderFact, RefundFact

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def _defined(rule: Any, segment: str = "vip") -> dict[str, Any]:
    return build_event(
        "crm.segment.defined.v1",
        segment,
        {"segment": segment, "rule": rule},
        source="operator",
        time=NOW,
    )


def _refusal(rule: Any, segment: str = "vip") -> str:
    with pytest.raises(InvalidEvent) as refused:
        _defined(rule, segment)
    return str(refused.value)


def test_a_valid_definition_survives_the_wire_and_dumps_as_written() -> None:
    rule = {
        "all": [
            {"field": "country", "in": ["France"]},
            {"not": {"bought": {"product_ids": ["85123A"], "within_days": 90}}},
            {"any": [{"rfm": {"currency": "GBP", "segments": ["champions"]}}]},
            {"measure": "net_revenue", "currency": "GBP", "at_least": 100},
        ]
    }
    event = parse_event(encode_event(_defined(rule)))
    assert segments.stored_rule(event.data.rule) == {  # type: ignore[attr-defined]
        "all": [
            {"field": "country", "in": ["France"]},
            {"not": {"bought": {"product_ids": ["85123A"], "within_days": 90}}},
            {
                "any": [
                    {
                        "rfm": {
                            "currency": "GBP",
                            "segments": ["champions"],
                            "min_r": 1,
                            "max_r": 5,
                            "min_f": 1,
                            "max_f": 5,
                            "min_m": 1,
                            "max_m": 5,
                        }
                    }
                ]
            },
            {"measure": "net_revenue", "currency": "GBP", "at_least": "100"},
        ]
    }


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ({"sql": "DROP TABLE customers"}, "a rule is an object with one of the keys"),
        ({"field": "password", "in": ["x"]}, "unknown field 'password'"),
        ({"field": "country", "in": []}, "at least 1 item"),
        ({"measure": "net_revenue", "at_least": 1}, "net_revenue needs a currency"),
        ({"measure": "orders"}, "give at_least, at_most or both"),
        ({"measure": "orders", "at_least": 5, "at_most": 1}, "at_least is above at_most"),
        ({"measure": "cancellations", "currency": "GBP", "at_least": 1}, "have no currency"),
        ({"measure": "complaints", "currency": "GBP", "at_least": 1}, "have no currency"),
        ({"measure": "complaints", "channel": "web", "at_least": 1}, "has no channel"),
        ({"measure": "refunds", "channel": "web", "at_least": 1}, "refunds has no channel"),
        ({"measure": "days_since_last_purchase", "within_days": 3, "at_least": 1}, "no within"),
        ({"measure": "visits", "at_least": 1}, "measure"),
        (
            {"bought": {"within_days": 30}},
            "give product_ids, description_contains, categories or several",
        ),
        ({"bought": {"categories": []}}, "at least 1 item"),
        ({"bought": {"categories": [""]}}, "at least 1 character"),
        ({"bought": {"product_ids": ["A"], "within_days": 0}}, "greater than or equal to 1"),
        ({"rfm": {"currency": "GBP", "segments": ["whales"]}}, "champions"),
        ({"rfm": {"currency": "gbp"}}, "currency"),
        ({"lifetime": {"currency": "GBP", "figure": "churn_probability"}}, "give at_least"),
        ({"lifetime": {"figure": "lifetime_value", "at_least": 1}}, "currency"),
        ({"lifetime": {"currency": "GBP", "figure": "loyalty", "at_least": 1}}, "figure"),
        (
            {"lifetime": {"currency": "GBP", "figure": "probability_alive", "at_least": 2}},
            "probability_alive is a probability: bounds from 0 to 1",
        ),
        (
            {
                "lifetime": {
                    "currency": "GBP",
                    "figure": "expected_purchases",
                    "at_least": 3,
                    "at_most": 2,
                }
            },
            "at_least is above at_most",
        ),
        ({"all": [{"field": "country", "in": ["x"]}], "extra": 1}, "extra"),
    ],
)
def test_an_invalid_rule_is_refused_with_the_reason(rule: Any, reason: str) -> None:
    assert reason in _refusal(rule)


def test_rules_are_bounded_in_size_and_depth_and_platform_segments_are_reserved() -> None:
    leaf = {"field": "country", "in": ["France"]}
    assert f"more than {MAX_RULE_NODES} nodes" in _refusal({"any": [leaf] * MAX_RULE_NODES})
    deep: dict[str, Any] = leaf
    for _ in range(10):
        deep = {"not": deep}
    assert "nests deeper than" in _refusal(deep)
    assert "derived by the platform" in _refusal(leaf, segment="lapsed")
    assert "pattern" in _refusal(leaf, segment="VIP customers")


def test_the_contract_names_the_rfm_segments_of_the_analysis() -> None:
    assert set(RFM_SEGMENT_NAMES) == set(analytics.RFM_SEGMENTS)


def _rule(document: dict[str, Any]) -> Any:
    return segments.RULE.validate_python(document)


def test_the_lines_a_rule_reads_are_those_its_bought_conditions_name_wherever_they_sit() -> None:
    kitchen = {"categories": ["kitchen"], "within_days": 30}
    mug = {"product_ids": ["MUG"]}
    rule = _rule(
        {
            "all": [
                {"measure": "orders", "at_least": 1},
                {"any": [{"bought": kitchen}, {"not": {"bought": mug}}]},
            ]
        }
    )
    named = [s.model_dump(mode="json", exclude_none=True) for s in segments.bought_specs(rule)]
    assert named == [kitchen, mug]
    assert segments.bought_specs(_rule({"measure": "orders", "at_least": 1})) == []
    assert segments.uses_categories(rule)
    assert not segments.uses_categories(_rule({"bought": mug}))


def test_time_dependent_rules_are_those_reading_the_clock_the_rfm_scores_or_the_model() -> None:
    assert not is_time_dependent(_rule({"measure": "orders", "at_least": 1}))
    assert not is_time_dependent(_rule({"bought": {"product_ids": ["A"]}}))
    assert is_time_dependent(_rule({"not": {"bought": {"product_ids": ["A"], "within_days": 9}}}))
    assert is_time_dependent(_rule({"measure": "days_since_last_purchase", "at_least": 1}))
    assert is_time_dependent(_rule({"any": [{"rfm": {"currency": "GBP"}}]}))
    churn = {"currency": "GBP", "figure": "churn_probability", "at_least": 0.5}
    assert is_time_dependent(_rule({"not": {"lifetime": churn}}))


def _order(
    order_id: str, days_ago: float, amount: str = "10", currency: str = "GBP", channel: str = "web"
) -> OrderFact:
    return OrderFact(order_id, NOW - timedelta(days=days_ago), channel, currency, Decimal(amount))


CUSTOMER = CustomerFacts(
    "c1",
    profile={"country": "France", "attributes.tier": "gold"},
    orders=(
        _order("o1", 100, "50"),
        _order("o2", 20, "30", channel="store"),
        _order("o3", 5, "40"),  # cancelled
        _order("o4", 2, "7", currency="EUR"),
    ),
    lines=(
        LineFact("o1", "A", "Red HEART lantern", "lighting"),
        LineFact("o2", "B", None, "kitchen"),
        LineFact("o3", "C", "Blue star", "garden"),
    ),
    refunds=(
        RefundFact("o2", NOW - timedelta(days=10), "GBP", Decimal("5")),
        RefundFact("o3", NOW - timedelta(days=4), "GBP", Decimal("40")),  # of the cancelled
        RefundFact(None, NOW - timedelta(days=1), "GBP", Decimal("1")),
    ),
    cancellations={"o3": NOW - timedelta(days=4)},
    rfm={"GBP": (5, 4, 4)},
    lifetime={"GBP": segments.LifetimePrediction(0.25, 2.0, 12.5)},
    complaints=(NOW - timedelta(days=100), NOW - timedelta(days=20), NOW - timedelta(days=2)),
    now=NOW,
)


@pytest.mark.parametrize(
    ("rule", "holds"),
    [
        ({"field": "country", "in": ["Spain", "France"]}, True),
        ({"field": "attributes.tier", "in": ["silver"]}, False),
        ({"field": "phone", "in": ["1"]}, False),
        ({"measure": "orders", "at_least": 3}, True),  # o1, o2, o4: o3 is cancelled
        ({"measure": "orders", "at_least": 4}, False),
        ({"measure": "orders", "currency": "GBP", "within_days": 30, "at_most": 1}, True),
        ({"measure": "orders", "channel": "store", "at_least": 1, "at_most": 1}, True),
        ({"measure": "gross_revenue", "currency": "GBP", "at_least": 80, "at_most": 80}, True),
        # 80 - 5 - 1: the refund of the cancelled order was part of the cancellation
        ({"measure": "net_revenue", "currency": "GBP", "at_least": 74, "at_most": 74}, True),
        ({"measure": "net_revenue", "currency": "GBP", "channel": "store", "at_most": 25}, True),
        ({"measure": "net_revenue", "currency": "GBP", "within_days": 7, "at_least": 0}, False),
        ({"measure": "refunds", "at_least": 3}, True),
        ({"measure": "refunds", "within_days": 5, "at_least": 2, "at_most": 2}, True),
        ({"measure": "cancellations", "within_days": 3, "at_least": 1}, False),
        ({"measure": "complaints", "at_least": 3}, True),
        ({"measure": "complaints", "within_days": 90, "at_least": 3}, False),
        ({"measure": "complaints", "within_days": 30, "at_least": 2, "at_most": 2}, True),
        ({"measure": "days_since_last_purchase", "at_least": 2, "at_most": 2}, True),
        ({"measure": "days_since_last_purchase", "currency": "GBP", "at_least": 21}, False),
        ({"bought": {"description_contains": "heart"}}, True),
        ({"bought": {"description_contains": "heart", "within_days": 99}}, False),
        ({"bought": {"product_ids": ["C"]}}, False),  # only in the cancelled order
        ({"bought": {"product_ids": ["B"], "description_contains": "b"}}, False),  # no text
        ({"bought": {"categories": ["kitchen", "toys"], "within_days": 30}}, True),  # o2
        ({"bought": {"categories": ["kitchen"], "within_days": 10}}, False),
        ({"bought": {"categories": ["garden"]}}, False),  # only in the cancelled order
        ({"bought": {"categories": ["lighting"], "description_contains": "heart"}}, True),
        ({"bought": {"categories": ["kitchen"], "product_ids": ["A"]}}, False),  # not one line
        ({"rfm": {"currency": "GBP", "segments": ["champions"]}}, True),
        ({"rfm": {"currency": "GBP", "min_f": 5}}, False),
        ({"rfm": {"currency": "EUR"}}, False),
        ({"not": {"rfm": {"currency": "EUR"}}}, True),
        ({"lifetime": {"currency": "GBP", "figure": "probability_alive", "at_most": 0.25}}, True),
        ({"lifetime": {"currency": "GBP", "figure": "probability_alive", "at_most": 0.2}}, False),
        ({"lifetime": {"currency": "GBP", "figure": "churn_probability", "at_least": 0.75}}, True),
        ({"lifetime": {"currency": "GBP", "figure": "churn_probability", "at_least": 0.8}}, False),
        ({"lifetime": {"currency": "GBP", "figure": "expected_purchases", "at_least": 2}}, True),
        ({"lifetime": {"currency": "GBP", "figure": "lifetime_value", "at_least": 25}}, True),
        ({"lifetime": {"currency": "GBP", "figure": "lifetime_value", "at_least": 25.01}}, False),
        ({"lifetime": {"currency": "EUR", "figure": "lifetime_value", "at_least": 0}}, False),
        ({"all": [{"measure": "orders", "at_least": 1}, {"field": "country", "in": ["x"]}]}, False),
        (
            {"any": [{"measure": "orders", "at_least": 9}, {"field": "country", "in": ["France"]}]},
            True,
        ),
    ],
)
def test_the_evaluator_reads_the_facts(rule: dict[str, Any], holds: bool) -> None:
    assert segments.matches(_rule(rule), CUSTOMER) is holds


def test_without_a_clock_no_time_window_holds_anything() -> None:
    unclocked = CustomerFacts("c1", orders=CUSTOMER.orders, lines=CUSTOMER.lines, now=None)
    assert segments.matches(_rule({"measure": "orders", "at_least": 3}), unclocked)
    for rule in (
        {"measure": "orders", "within_days": 3650, "at_least": 1},
        {"measure": "days_since_last_purchase", "at_least": 0},
        {"bought": {"product_ids": ["A"], "within_days": 3650}},
    ):
        assert not segments.matches(_rule(rule), unclocked)
    assert segments.matches(_rule({"measure": "orders", "within_days": 9, "at_most": 0}), unclocked)


def test_rfm_conditions_accept_the_score_triples_of_their_segments_and_bounds() -> None:
    spec = _rule({"rfm": {"currency": "GBP", "segments": ["lost"], "max_f": 1}}).rfm
    assert segments.rfm_triples(spec) == [(1, 1, 1), (1, 1, 2), (1, 1, 3)]  # F-M mean 1 or 2


def test_a_persons_facts_are_its_records_together_with_order_ids_kept_apart() -> None:
    def order(order_id: str, days_ago: int) -> OrderFact:
        return OrderFact(order_id, NOW - timedelta(days=days_ago), "web", "GBP", Decimal(10))

    ann = CustomerFacts(
        "ann",
        orders=[order("o1", 40)],
        lines=[LineFact("o1", "P1", "mug")],
        complaints=[NOW, NOW],
        rfm={"GBP": (1, 1, 1)},
        lifetime={"GBP": segments.LifetimePrediction(0.5, 1.0, 10.0)},
        now=NOW - timedelta(days=1),
    )
    visitor = CustomerFacts(
        "visitor",
        orders=[order("o1", 5)],  # the same id on another record: another order
        refunds=[RefundFact("o1", NOW, "GBP", Decimal(4))],
        cancellations={"o1": NOW},
        complaints=[NOW],
        lifetime={"GBP": segments.LifetimePrediction(0.9, 4.0, 10.0)},  # fitted before the merge
        now=NOW,
    )
    person = segments.person_facts("ann", [ann, visitor], {"country": "UK"})

    def holds(rule: dict[str, Any]) -> bool:
        return segments.matches(segments.RULE.validate_python(rule), person)

    assert person.customer_id == "ann" and person.now == NOW and person.rfm == ann.rfm
    assert person.lifetime == ann.lifetime  # fitted per person, under the person's id
    assert holds({"measure": "complaints", "at_least": 3})
    assert holds({"field": "country", "in": ["UK"]})
    # The visitor's o1 is cancelled (and its refund with it), Ann's o1 is not.
    assert holds({"measure": "orders", "at_most": 1, "at_least": 1})
    assert holds({"measure": "net_revenue", "currency": "GBP", "at_least": 10, "at_most": 10})
    assert holds({"bought": {"product_ids": ["P1"]}})
