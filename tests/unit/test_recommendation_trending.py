"""Trending arithmetic: decayed purchases in log space, scopes, segment membership changes."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from recommendation_service.projection import Purchase
from recommendation_service.trending import (
    EVERYONE,
    country_scope,
    decayed_score,
    latest_segment_changes,
    log_add,
    log_weight,
    reason_text,
    scope_of,
    segment_scope,
    trend_deltas,
)
from tests.unit.events_factory import event

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _bought(product: str, days_ago: float, customer: str = "C1", country: str | None = None):
    return Purchase(customer, product, 1, NOW - timedelta(days=days_ago), None, country)


def test_a_purchase_weighs_half_as_much_one_half_life_later() -> None:
    [delta] = trend_deltas([_bought("P1", 7)], {}, 7.0).values()
    assert decayed_score(delta.log_score, NOW, 7.0) == pytest.approx(0.5)
    assert decayed_score(delta.log_score, NOW - timedelta(days=7), 7.0) == pytest.approx(1.0)


def test_log_space_sums_equal_the_decayed_weights_summed_directly() -> None:
    ages = [0.5, 3, 7, 14, 30, 90]
    [delta] = trend_deltas([_bought("P1", age) for age in ages], {}, 7.0).values()
    assert decayed_score(delta.log_score, NOW, 7.0) == pytest.approx(
        sum(0.5 ** (age / 7) for age in ages)
    )
    assert delta.purchases == len(ages)
    assert delta.last_bought_at == NOW - timedelta(days=0.5)


def test_weights_decades_after_the_epoch_stay_finite() -> None:
    """2^(days / 0.1) would overflow a double; its logarithm and the log-add do not."""
    far = datetime(2090, 1, 1, tzinfo=UTC)
    big = log_weight(far, 0.1)
    assert math.isfinite(big) and big > 1e5
    assert log_add(big, big) == pytest.approx(big + math.log(2))
    assert log_add(big, 0.0) == big  # a negligible term adds nothing, without underflow


def test_the_sum_does_not_depend_on_the_order_of_the_batch() -> None:
    batch = [_bought(f"P{n % 3}", n * 1.7, customer=f"C{n}") for n in range(30)]
    shuffled = batch[:]
    random.Random(4).shuffle(shuffled)
    assert trend_deltas(batch, {}, 7.0) == trend_deltas(shuffled, {}, 7.0)


def test_a_recent_purchase_outranks_older_ones() -> None:
    deltas = trend_deltas(
        [_bought("OLD", 30), _bought("OLD", 31), _bought("OLD", 32), _bought("NEW", 1)], {}, 7.0
    )
    assert deltas[(EVERYONE, "NEW")].log_score > deltas[(EVERYONE, "OLD")].log_score


def test_a_purchase_counts_for_everyone_its_country_and_its_customers_segments() -> None:
    deltas = trend_deltas(
        [_bought("P1", 1, "C1", "GB"), _bought("P1", 2, "C2")],
        {"C1": ["vip", "new"], "C9": ["vip"]},
        7.0,
    )
    assert {scope: delta.purchases for (scope, _), delta in deltas.items()} == {
        EVERYONE: 2,
        country_scope("GB"): 1,
        segment_scope("vip"): 1,
        segment_scope("new"): 1,
    }


def test_the_newest_segment_change_is_the_highest_version_whatever_the_order() -> None:
    def change(kind: str, version: int):
        data = {"segment": "vip", "version": version, "reason": "rule"}
        return event(f"crm.segment.{kind}.v1", "C1", data)

    entered, left, again = change("entered", 1), change("left", 2), change("entered", 3)
    for batch in ([entered, left, again], [again, left, entered]):
        [found] = latest_segment_changes(batch).values()
        assert (found.member, found.version) == (True, 3)
    [found] = latest_segment_changes([left, entered]).values()
    assert (found.member, found.version) == (False, 2)


def test_a_request_asks_for_one_scope_and_says_why() -> None:
    assert scope_of(None, None) == EVERYONE
    assert scope_of("GB", None) == "country:GB"
    assert scope_of(None, "vip") == "segment:vip"
    with pytest.raises(ValueError, match="not both"):
        scope_of("GB", "vip")
    assert reason_text("GB", None) == "trending in GB"
    assert reason_text(None, "vip") == "popular in your segment"
    assert reason_text(None, None) == "trending"
