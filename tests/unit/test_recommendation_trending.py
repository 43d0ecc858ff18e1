"""Trending arithmetic: decayed purchases less refunds as exact integer sums, scopes, segment
membership."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from recommendation_service.projection import Purchase
from recommendation_service.trending import (
    EVERYONE,
    country_scope,
    decayed_score,
    latest_segment_changes,
    reason_text,
    scope_of,
    segment_scope,
    trend_deltas,
    weight,
)
from tests.unit.events_factory import event

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _bought(product: str, days_ago: float, customer: str = "C1", country: str | None = None):
    return Purchase(customer, product, 1, NOW - timedelta(days=days_ago), None, country)


def test_a_purchase_weighs_half_as_much_one_half_life_later() -> None:
    [delta] = trend_deltas([_bought("P1", 7)], [], {}, 7.0).values()
    assert decayed_score(delta.score, NOW, 7.0) == pytest.approx(0.5)
    assert decayed_score(delta.score, NOW - timedelta(days=7), 7.0) == pytest.approx(1.0)


def test_sums_equal_the_decayed_weights_summed_directly() -> None:
    ages = [0.5, 3, 7, 14, 30, 90]
    [delta] = trend_deltas([_bought("P1", age) for age in ages], [], {}, 7.0).values()
    assert decayed_score(delta.score, NOW, 7.0) == pytest.approx(
        sum(0.5 ** (age / 7) for age in ages)
    )
    assert delta.purchases == len(ages)
    assert delta.last_bought_at == NOW - timedelta(days=0.5)


def test_weights_far_beyond_what_a_double_holds_stay_exact_integers() -> None:
    """2^(days / 1) by 2090 is about 10^9900: a double overflows, an integer does not."""
    far = datetime(2090, 1, 1, tzinfo=UTC)
    big = weight(far, 1.0)
    assert isinstance(big, int) and big.bit_length() > 30_000
    assert decayed_score(big + big, far, 1.0) == pytest.approx(2.0)
    assert weight(datetime(2000, 1, 1, tzinfo=UTC), 7.0) == 2**52  # the epoch weighs 1


def test_the_sums_are_the_same_whatever_the_order_and_the_batches() -> None:
    batch = [_bought(f"P{n % 3}", n * 1.7, customer=f"C{n}") for n in range(30)]
    refunded = [_bought(f"P{n % 3}", n * 1.3, customer=f"C{n}") for n in range(0, 30, 4)]
    shuffled, refunds_shuffled = batch[:], refunded[:]
    random.Random(4).shuffle(shuffled)
    random.Random(5).shuffle(refunds_shuffled)
    whole = trend_deltas(batch, refunded, {}, 7.0)
    assert trend_deltas(shuffled, refunds_shuffled, {}, 7.0) == whole
    parts = [
        trend_deltas(shuffled[start : start + 7], refunds_shuffled[start // 7 :: 5], {}, 7.0)
        for start in range(0, 35, 7)
    ]
    for key, delta in whole.items():
        assert sum(part[key].score for part in parts if key in part) == delta.score
        assert sum(part[key].purchases for part in parts if key in part) == delta.purchases


def test_a_recent_purchase_outranks_older_ones() -> None:
    deltas = trend_deltas(
        [_bought("OLD", 30), _bought("OLD", 31), _bought("OLD", 32), _bought("NEW", 1)],
        [],
        {},
        7.0,
    )
    assert deltas[(EVERYONE, "NEW")].score > deltas[(EVERYONE, "OLD")].score


def test_a_purchase_counts_for_everyone_its_country_and_its_customers_segments() -> None:
    deltas = trend_deltas(
        [_bought("P1", 1, "C1", "GB"), _bought("P1", 2, "C2")],
        [],
        {"C1": ["vip", "new"], "C9": ["vip"]},
        7.0,
    )
    assert {scope: delta.purchases for (scope, _), delta in deltas.items()} == {
        EVERYONE: 2,
        country_scope("GB"): 1,
        segment_scope("vip"): 1,
        segment_scope("new"): 1,
    }


def test_a_refunded_purchase_counts_below_nothing_and_its_weight_decays() -> None:
    """Bought 10 days ago, refunded 3 days ago: 2^-10/7 - 2^-3/7 as of now, in every scope the
    refund counts in (its country, its customer's segments); the purchase count stays."""
    deltas = trend_deltas(
        [_bought("P1", 10, "C1", "GB"), _bought("P2", 1, "C2", "GB")],
        [_bought("P1", 3, "C1", "GB")],
        {"C1": ["vip"]},
        7.0,
    )
    for scope in (EVERYONE, country_scope("GB"), segment_scope("vip")):
        refunded = deltas[(scope, "P1")]
        assert decayed_score(refunded.score, NOW, 7.0) == pytest.approx(
            0.5 ** (10 / 7) - 0.5 ** (3 / 7)
        )
        assert refunded.purchases == 1 and refunded.last_bought_at == NOW - timedelta(days=10)
    assert deltas[(EVERYONE, "P2")].score > 0 > deltas[(EVERYONE, "P1")].score


def test_a_refund_folded_alone_subtracts_and_dates_nothing() -> None:
    [(key, delta)] = trend_deltas([], [_bought("P1", 3)], {}, 7.0).items()
    assert key == (EVERYONE, "P1")
    assert delta.score == -weight(NOW - timedelta(days=3), 7.0)
    assert (delta.purchases, delta.last_bought_at) == (0, None)


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
