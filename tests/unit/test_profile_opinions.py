"""What customers tell of the brand and its competitors: the contract refuses what cannot be
counted, and each statement becomes one row with what is counted and why."""

from __future__ import annotations

import pytest

from crm_shared.contracts.events import InvalidEvent
from profile_service.opinions import OpinionKind, brand_key, opinion_rows
from tests.unit.events_factory import at, event, order


def test_each_kind_of_statement_becomes_a_row_with_its_topic_and_reason() -> None:
    rows = opinion_rows(
        [
            event(
                "crm.customer.dislike.stated.v1",
                "C1",
                {"aspect": "delivery", "about": "next-day", "captured_via": "call"},
                minutes=1,
                event_id="d1",
            ),
            order("C1", "O1", ("P1", 1, "5"), minutes=2),
            event(
                "crm.customer.competitor_purchase.reported.v1",
                "C1",
                {"brand": "  Acme ", "category": "mugs", "reason": "price"},
                minutes=3,
            ),
            event(
                "crm.customer.purchase.declined.v1",
                "C2",
                {"reason": "prefers_competitor", "product_id": "P9", "competitor_brand": "ACME"},
                minutes=4,
            ),
        ]
    )
    assert [(r.customer_id, r.kind, r.topic, r.reason, r.competitor, r.about) for r in rows] == [
        ("C1", OpinionKind.DISLIKE, "delivery", None, None, "next-day"),
        ("C1", OpinionKind.COMPETITOR_PURCHASE, "Acme", "price", "Acme", "mugs"),
        ("C2", OpinionKind.DECLINED, "prefers_competitor", None, "ACME", "P9"),
    ]
    assert (rows[0].event_id, rows[0].captured_via, rows[0].stated_at) == ("d1", "call", at(1))
    assert rows[1].captured_via == "survey"  # the default: most statements come from surveys


def test_brand_spellings_are_grouped_by_case_and_spacing() -> None:
    assert brand_key(" Acme  Home ") == brand_key("ACME HOME") == "acme home"
    assert brand_key("Acme") != brand_key("Acme Home")


@pytest.mark.parametrize(
    ("event_type", "data", "field"),
    [
        ("crm.customer.dislike.stated.v1", {"aspect": "colour of the sky"}, "aspect"),
        ("crm.customer.competitor_purchase.reported.v1", {"brand": ""}, "brand"),
        ("crm.customer.competitor_purchase.reported.v1", {"brand": "X", "reason": "?"}, "reason"),
        ("crm.customer.purchase.declined.v1", {}, "reason"),
        ("crm.customer.purchase.declined.v1", {"reason": "price", "captured_via": "x"}, "captured"),
    ],
)
def test_statements_that_cannot_be_counted_are_refused_with_the_field(
    event_type: str, data: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidEvent, match=field):
        event(event_type, "C1", data)
