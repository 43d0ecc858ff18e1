"""The reference for the recommendation service's similar products, computed plainly from the
published events: what the neighbour job must converge to (component and crash tests)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from recommendation_service.models import Similar, SimilarPair
from recommendation_service.neighbours import Entry, rank
from recommendation_service.projection import is_goods

SimilarLists = dict[str, list[tuple[str, int]]]
"""product -> [(other product, distinct customers who kept both)], most similar first."""

SERVED_SIMILAR_SQL = """
    SELECT product_id, other_product_id, co_buyers FROM (
        SELECT product_id, other_product_id, co_buyers, similarity,
               row_number() OVER (PARTITION BY product_id
                                  ORDER BY similarity DESC, other_product_id COLLATE "C") AS rank
        FROM similar_products WHERE product_id LIKE $2
    ) ranked
    WHERE rank <= $1
    ORDER BY product_id, similarity DESC, other_product_id COLLATE "C"
"""
"""The served part of the stored lists ($1 entries each) of the products LIKE $2: the entries a
list keeps beyond it, its reserve, depend on its history (recommendation_service.neighbours)."""


def units_kept(events: Iterable[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """(customer, product) -> units ordered minus units refunded."""
    units: dict[tuple[str, str], int] = defaultdict(int)
    for event in events:
        sign = {"crm.order.placed.v1": 1, "crm.order.refunded.v1": -1}.get(event["type"])
        if sign is None:
            continue
        for line in event["data"]["lines"]:
            units[event["subject"], line["product_id"]] += sign * line["quantity"]
    return units


def kept_products(events: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """customer -> the goods they kept some of: units ordered minus units refunded above zero."""
    kept: dict[str, set[str]] = defaultdict(set)
    for (customer, product), count in units_kept(events).items():
        if count > 0 and is_goods(product):
            kept[customer].add(product)
    return kept


def plain_similar_products(events: Iterable[dict[str, Any]], kept: int) -> SimilarLists:
    """Top `kept` goods per good by cosine of their buyer sets (co-buyers over the square root of
    the product of both buyer counts), ties by code; with the co-buyer counts."""
    buyers: dict[str, int] = defaultdict(int)
    co: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for products in kept_products(events).values():
        for a in products:
            buyers[a] += 1
            for b in products:
                if a != b:
                    co[a][b] += 1

    def similarity(a: str, b: str) -> float:
        return co[a][b] / math.sqrt(buyers[a] * buyers[b])

    return {
        a: [(b, co[a][b]) for b in sorted(others, key=lambda b: (-similarity(a, b), b))[:kept]]
        for a, others in co.items()
    }


def ranked(pairs: Mapping[SimilarPair, Similar]) -> dict[str, list[Entry]]:
    """Stored or computed (product, other) rows as each product's list, in rank order."""
    lists: dict[str, list[Entry]] = defaultdict(list)
    for (product, other), (co, similarity) in pairs.items():
        lists[product].append((other, co, similarity))
    return {product: sorted(entries, key=rank) for product, entries in lists.items()}


def assert_serves(
    stored: Mapping[SimilarPair, Similar],
    whole: Mapping[SimilarPair, Similar],
    served: int,
    when: object,
) -> None:
    """The stored lists serve what the `whole` recomputation (keeping served + reserve) gives:
    the same first `served` entries, and each stored list is the exact start of the whole one,
    no shorter than `served` unless that is complete."""
    lists, ranking = ranked(stored), ranked(whole)
    assert {p: e[:served] for p, e in lists.items()} == {
        p: e[:served] for p, e in ranking.items()
    }, when
    for product, entries in lists.items():
        assert entries == ranking[product][: len(entries)], (when, product)
        assert len(entries) >= min(served, len(ranking[product])), (when, product)
