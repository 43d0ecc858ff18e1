"""The catalogue's fold (latest record by event time, earliest listing), the filters answers are
narrowed by, and how filtered picks are topped up with popular goods."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import httpx
import pytest

from crm_shared.contracts.events import InvalidEvent
from crm_shared.runtime.http import service_token_headers
from recommendation_service.api import CatalogueQuery, create_app
from recommendation_service.catalogue import (
    CatalogueFilter,
    InvalidFilter,
    latest_records,
    record_of,
    topped_up,
)
from recommendation_service.config import RecommendationSettings
from tests.unit.events_factory import at, event

CATALOGUED = "crm.product.catalogued.v1"


def _catalogued(product: str, minutes: float, *, event_id: str | None = None, **fields: Any) -> Any:
    data = {"product_id": product, "name": f"{product} v{minutes}", "price": "2.50"}
    data.update({"available": True, **fields})
    return event(CATALOGUED, product, data, minutes=minutes, event_id=event_id)


def test_the_latest_record_by_event_time_wins_whatever_the_arrival_order() -> None:
    records = [
        _catalogued("P1", 5, category="kitchen", price="3.00"),
        _catalogued("P1", 9, category="garden", price="4.00", available=False),
        _catalogued("P1", 1, category="toys"),
    ]
    latest_by_order = [latest_records(order)["P1"] for order in itertools.permutations(records)]
    found = {(record.category, record.price) for record in latest_by_order}
    assert found == {("garden", Decimal("4.00"))}
    latest = latest_records(records)["P1"]
    assert (latest.name, latest.available, latest.recorded_at) == ("P1 v9", False, at(9))


def test_first_listing_is_the_earliest_of_all_records_or_their_stated_listing() -> None:
    early = _catalogued("P1", 20, listed_at=at(-60).isoformat())
    late = _catalogued("P1", 30)
    assert latest_records([late, early])["P1"].first_listed_at == at(-60)
    assert latest_records([_catalogued("P2", 7)])["P2"].first_listed_at == at(7)
    # A listing dated after its own event is read as the event's time.
    assert record_of(_catalogued("P3", 7, listed_at=at(99).isoformat())).first_listed_at == at(7)


def test_ties_of_event_time_are_broken_by_source_then_id_as_the_sql_guard_does() -> None:
    a = _catalogued("P1", 5, event_id="a", category="first")
    b = _catalogued("P1", 5, event_id="b", category="second")
    assert latest_records([b, a])["P1"].category == "second"
    assert latest_records([a, b])["P1"].category == "second"


def test_the_kind_decides_what_is_goods_not_the_code() -> None:
    assert not record_of(_catalogued("85123A", 0, kind="postage")).goods
    assert record_of(_catalogued("POST", 0, kind="goods")).goods
    assert record_of(_catalogued("P1", 0)).goods  # goods unless said otherwise


def test_a_bad_catalogue_record_is_refused_with_its_reason() -> None:
    with pytest.raises(InvalidEvent, match="price"):
        _catalogued("P1", 0, price="-1")
    with pytest.raises(InvalidEvent, match="currency"):
        _catalogued("P1", 0, currency="pounds")
    with pytest.raises(InvalidEvent, match="kind"):
        _catalogued("P1", 0, kind="gadget")


def test_a_price_range_no_price_fits_is_refused_with_a_message() -> None:
    with pytest.raises(InvalidFilter, match="min_price 5 is above max_price 2"):
        CatalogueFilter(min_price=Decimal(5), max_price=Decimal(2))
    assert CatalogueFilter(min_price=Decimal(2), max_price=Decimal(2)).active


async def test_an_empty_price_range_is_a_value_error_of_the_query_and_a_422_at_the_edge() -> None:
    """The query model raises a plain ValueError; the app answers it as FastAPI answers an
    HTTPException: 422 and the reason, before any database is asked."""
    with pytest.raises(ValueError, match="min_price 5 is above max_price 2: no price fits"):
        CatalogueQuery(min_price=Decimal(5), max_price=Decimal(2)).wanted()
    settings = RecommendationSettings()
    transport = httpx.ASGITransport(create_app(settings))  # no lifespan: no pool to ask
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        answer = await client.get(
            "/customers/ME/recommendations?min_price=5&max_price=2",
            headers=service_token_headers(settings.platform.service_token),
        )
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["message"] == "min_price 5 is above max_price 2: no price fits"
    assert error["request_id"] == answer.headers["X-Request-ID"] and "details" not in error


def test_any_condition_leaves_out_products_the_catalogue_does_not_know() -> None:
    record = record_of(_catalogued("P1", 0, category="kitchen", price="3"))
    assert CatalogueFilter().matches(None)  # no filter: everything
    assert not CatalogueFilter(available=True).matches(None)
    assert CatalogueFilter(category="kitchen", available=True).matches(record)
    assert not CatalogueFilter(category="garden").matches(record)
    assert not CatalogueFilter(available=False).matches(record)


def test_price_bounds_are_read_in_the_named_currency_or_gbp() -> None:
    gbp = record_of(_catalogued("P1", 0, price="3"))
    eur = record_of(_catalogued("P2", 0, price="3", currency="EUR"))
    cheap = CatalogueFilter(max_price=Decimal(5))
    assert cheap.price_currency == "GBP"
    assert cheap.matches(gbp) and not cheap.matches(eur)
    in_euros = CatalogueFilter(max_price=Decimal(5), currency="EUR")
    assert in_euros.matches(eur) and not in_euros.matches(gbp)
    assert not CatalogueFilter(min_price=Decimal("3.01")).matches(gbp)
    assert CatalogueFilter().price_currency is None


def _doc(product: str, reason: str) -> dict[str, Any]:
    return {"product_id": product, "reason": {"text": reason}}


def test_filtered_picks_come_first_then_popular_goods_not_already_there() -> None:
    picks = [_doc("A", "bought together with X"), _doc("B", "similar customers")]
    popular = [_doc("B", "popular"), _doc("X", "popular"), _doc("C", "popular")]
    found = topped_up(picks, popular, 4, excluded=["X"])
    assert [(d["product_id"], d["reason"]["text"]) for d in found] == [
        ("A", "bought together with X"),
        ("B", "similar customers"),
        ("C", "popular"),
    ]


def test_enough_matching_picks_need_no_popular_goods() -> None:
    picks = [_doc(p, "personal") for p in "ABC"]
    assert [d["product_id"] for d in topped_up(picks, [_doc("Z", "popular")], 2)] == ["A", "B"]
