"""Recommendation projection: first purchases, bounded co-purchases, product stats and ranking."""

from __future__ import annotations

import itertools
from collections import Counter

from recommendation_service.projection import (
    CO_PURCHASE_PARTNERS,
    VIEW_BOOST,
    ViewDelta,
    co_purchase_increments,
    customer_product_deltas,
    first_purchases,
    product_deltas,
    purchases,
    recommend,
    score,
    view_deltas,
)
from tests.unit.events_factory import at, event, order, refund


def _line(product: str, quantity: int = 1, description: str | None = None) -> dict[str, object]:
    line: dict[str, object] = {"product_id": product, "quantity": quantity, "unit_price": "1"}
    if description is not None:
        line["description"] = description
    return line


def _order(customer: str, *lines: dict[str, object], minutes: float = 0):
    data = {"order_id": f"O-{customer}-{minutes}", "lines": list(lines)}
    return event("crm.order.placed.v1", customer, data, minutes=minutes)


def _view(customer: str, product: str, minutes: float = 0):
    return event("crm.product.viewed.v1", customer, {"product_id": product}, minutes=minutes)


def _pair(a: str, b: str, n: int = 1) -> Counter[tuple[str, str]]:
    return Counter({(min(a, b), max(a, b)): n})


def _partners(pairs: Counter[tuple[str, str]], product: str) -> set[str]:
    return {b if a == product else a for a, b in pairs if product in (a, b)}


# --- purchases ---------------------------------------------------------------------------------


def test_purchases_merge_lines_of_the_same_product_within_an_order() -> None:
    found = purchases(
        [_order("C1", _line("P1", 2, "Mug"), _line("P2", 1), _line("P1", 3, "Red mug"))]
    )
    assert [(p.product_id, p.quantity, p.description) for p in found] == [
        ("P1", 5, "Red mug"),
        ("P2", 1, None),
    ]


def test_purchases_are_in_event_time_order_and_ignore_refunds_and_views() -> None:
    found = purchases(
        [
            order("C1", "O2", ("P2", 1, "1"), minutes=20),
            refund("C1", "R1", ("P1", 1, "1"), minutes=30),
            _view("C1", "P9", minutes=1),
            order("C2", "O1", ("P1", 1, "1"), minutes=10),
        ]
    )
    assert [(p.customer_id, p.product_id, p.time) for p in found] == [
        ("C2", "P1", at(10)),
        ("C1", "P2", at(20)),
    ]


def test_a_line_without_description_keeps_the_one_of_an_earlier_line() -> None:
    (found,) = purchases([_order("C1", _line("P1", 1, "Mug"), _line("P1", 1))])
    assert found.description == "Mug"


# --- first purchases ---------------------------------------------------------------------------


def test_first_purchases_skip_what_was_bought_before_and_repeats_within_the_batch() -> None:
    batch = purchases(
        [
            _order("C1", _line("P1"), _line("P2"), minutes=0),
            _order("C1", _line("P2"), _line("P3"), minutes=5),
            _order("C2", _line("P1"), minutes=6),
        ]
    )
    first = first_purchases(batch, bought={("C1", "P1")})
    assert [(p.customer_id, p.product_id) for p in first] == [
        ("C1", "P2"),
        ("C1", "P3"),
        ("C2", "P1"),
    ]


def test_a_late_order_of_an_already_bought_product_is_not_a_first_purchase() -> None:
    late = purchases([_order("C1", _line("P1"), minutes=-60)])
    assert first_purchases(late, bought={("C1", "P1")}) == []


def test_of_two_orders_in_one_batch_the_earlier_by_event_time_is_the_first_purchase() -> None:
    batch = purchases([_order("C1", _line("P1"), minutes=9), _order("C1", _line("P1"), minutes=2)])
    (first,) = first_purchases(batch, bought=set())
    assert first.time == at(2)


# --- co-purchases ------------------------------------------------------------------------------


def test_products_of_one_order_become_co_purchases_keyed_smaller_id_first() -> None:
    pairs = co_purchase_increments([("C1", "C"), ("C1", "B"), ("C1", "A")], recent={})
    assert pairs == Counter({("A", "B"): 1, ("A", "C"): 1, ("B", "C"): 1})


def test_a_new_product_pairs_with_what_the_customer_bought_before() -> None:
    pairs = co_purchase_increments([("C1", "C")], recent={"C1": ["B", "A"]})
    assert pairs == _pair("C", "A") + _pair("C", "B")


def test_each_customer_counts_once_per_pair() -> None:
    pairs = co_purchase_increments(
        [("C1", "A"), ("C1", "B"), ("C2", "B"), ("C2", "A"), ("C3", "A")], recent={}
    )
    assert pairs == _pair("A", "B", 2)


def test_duplicates_of_a_product_within_the_input_count_once() -> None:
    pairs = co_purchase_increments([("C1", "A"), ("C1", "B"), ("C1", "A"), ("C1", "B")], {})
    assert pairs == _pair("A", "B")


def test_a_product_already_in_the_recent_list_is_not_paired_again() -> None:
    assert co_purchase_increments([("C1", "A")], recent={"C1": ["A", "B"]}) == Counter()


def test_a_single_product_makes_no_pair_and_nothing_pairs_with_itself() -> None:
    assert co_purchase_increments([("C1", "A")], recent={}) == Counter()
    assert all(a != b for a, b in co_purchase_increments([("C1", "A"), ("C1", "B")], {}))


def test_co_purchase_counts_do_not_depend_on_arrival_order_within_the_bound() -> None:
    purchases_of_c1 = [("C1", p) for p in "ABCD"]
    expected = co_purchase_increments(purchases_of_c1, recent={})
    for permutation in itertools.permutations(purchases_of_c1):
        assert co_purchase_increments(list(permutation), recent={}) == expected
    # Split across two batches: the first batch's products come back as stored history.
    first_batch = co_purchase_increments(purchases_of_c1[:2], recent={})
    second_batch = co_purchase_increments(purchases_of_c1[2:], recent={"C1": ["B", "A"]})
    assert first_batch + second_batch == expected


def test_a_new_product_pairs_only_with_the_most_recent_stored_products() -> None:
    stored = [f"P{i:03}" for i in range(80)]  # newest first
    pairs = co_purchase_increments([("C1", "NEW")], recent={"C1": stored})
    assert _partners(pairs, "NEW") == set(stored[:CO_PURCHASE_PARTNERS])
    assert sum(pairs.values()) == CO_PURCHASE_PARTNERS


def test_within_a_batch_the_bound_keeps_the_most_recent_first_purchases() -> None:
    batch = [("C1", f"P{i:03}") for i in range(CO_PURCHASE_PARTNERS + 10)]
    pairs = co_purchase_increments(batch, recent={})
    last = batch[-1][1]
    assert _partners(pairs, last) == {p for _, p in batch[-CO_PURCHASE_PARTNERS - 1 : -1]}
    assert ("P000", last) not in pairs
    assert _partners(pairs, "P000") == {p for _, p in batch[1 : CO_PURCHASE_PARTNERS + 1]}


def test_the_bound_can_be_changed() -> None:
    pairs = co_purchase_increments([("C1", "C")], recent={"C1": ["B", "A"]}, partners=1)
    assert pairs == _pair("C", "B")


# --- customer products, views and product statistics -------------------------------------------


def test_customer_product_deltas_count_orders_and_keep_first_and_last_time() -> None:
    batch = purchases(
        [
            _order("C1", _line("P1", 2), minutes=30),
            _order("C1", _line("P1", 1), _line("P1", 1), minutes=10),
            _order("C2", _line("P1", 1), minutes=20),
        ]
    )
    deltas = customer_product_deltas(batch)
    c1 = deltas["C1", "P1"]
    assert (c1.times_bought, c1.first_bought_at, c1.last_bought_at) == (2, at(10), at(30))
    assert deltas["C2", "P1"].times_bought == 1


def test_view_deltas_count_views_and_keep_the_latest_time_whatever_the_arrival_order() -> None:
    deltas = view_deltas(
        [_view("C1", "P1", minutes=50), _view("C1", "P1", minutes=5), _view("C2", "P1")]
    )
    assert deltas["C1", "P1"] == ViewDelta(2, at(50))
    assert deltas["C2", "P1"] == ViewDelta(1, at(0))
    assert view_deltas([order("C1", "O1", ("P1", 1, "1"))]) == {}


def test_product_deltas_sum_orders_quantity_new_buyers_and_views() -> None:
    batch = purchases(
        [
            _order("C1", _line("P1", 2), _line("P2", 1), minutes=1),
            _order("C1", _line("P1", 3), minutes=2),
            _order("C2", _line("P1", 1), minutes=3),
        ]
    )
    first = first_purchases(batch, bought={("C2", "P1")})
    views = {("C3", "P1"): ViewDelta(4, at(0)), ("C3", "P9"): ViewDelta(1, at(0))}
    deltas = product_deltas(batch, first, views)
    p1 = deltas["P1"]
    assert (p1.orders, p1.quantity, p1.buyers, p1.views) == (3, 6, 1, 4)
    assert (deltas["P2"].orders, deltas["P2"].buyers) == (1, 1)
    assert (deltas["P9"].orders, deltas["P9"].views, deltas["P9"].description) == (0, 1, None)


def test_the_description_is_the_newest_by_event_time_not_by_arrival() -> None:
    batch = purchases(
        [
            _order("C1", _line("P1", 1, "New name"), minutes=20),
            _order("C2", _line("P1", 1, "Old name"), minutes=5),
            _order("C3", _line("P1", 1), minutes=30),
        ]
    )
    p1 = product_deltas(batch, [], {})["P1"]
    assert (p1.description, p1.described_at) == ("New name", at(20))


# --- ranking -----------------------------------------------------------------------------------


def test_recommendations_rank_by_summed_co_buyers_and_exclude_what_was_bought() -> None:
    ranked = recommend(
        bought={"A", "B"},
        co_buyers={"A": 9, "X": 3, "Y": 7, "Z": 3},
        viewed=set(),
        popular=[("P", 100)],
        limit=10,
    )
    assert ranked.strategy == "co-purchase"
    assert [(r.product_id, r.score) for r in ranked.items] == [
        ("Y", 7.0),
        ("X", 3.0),
        ("Z", 3.0),
    ]


def test_a_viewed_product_is_boosted_and_ranks_even_without_co_buyers() -> None:
    ranked = recommend(
        bought={"A"},
        co_buyers={"X": 5, "Y": 4},
        viewed={"Y", "V", "A"},
        popular=[],
        limit=10,
    )
    assert [r.product_id for r in ranked.items] == ["Y", "X", "V"]
    y, _, v = ranked.items
    assert (y.score, y.viewed, y.co_buyers) == ((4 + 1) * VIEW_BOOST, True, 4)
    assert v.score == score(0, viewed=True) == VIEW_BOOST


def test_the_limit_keeps_the_best() -> None:
    co_buyers = {f"P{i}": i for i in range(1, 30)}
    ranked = recommend({"A"}, co_buyers, set(), [], limit=3)
    assert [r.product_id for r in ranked.items] == ["P29", "P28", "P27"]


def test_a_customer_without_purchases_gets_the_popular_products() -> None:
    ranked = recommend(set(), {}, viewed={"V"}, popular=[("P1", 40), ("P2", 30)], limit=10)
    assert ranked.strategy == "popular"
    assert [(r.product_id, r.score, r.co_buyers) for r in ranked.items] == [
        ("P1", 40.0, 0),
        ("P2", 30.0, 0),
    ]


def test_when_purchases_point_nowhere_popular_products_not_yet_bought_are_offered() -> None:
    ranked = recommend(
        bought={"P1"},
        co_buyers={"P1": 3},
        viewed=set(),
        popular=[("P1", 40), ("P2", 30), ("P3", 20)],
        limit=1,
    )
    assert ranked.strategy == "popular"
    assert [r.product_id for r in ranked.items] == ["P2"]
