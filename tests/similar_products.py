"""The reference for the recommendation service's similar products, computed plainly from the
published events: what the neighbour job must converge to (component and crash tests)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from recommendation_service.projection import is_goods

SimilarLists = dict[str, list[tuple[str, int]]]
"""product -> [(other product, distinct customers who bought both)], best first."""


def plain_similar_products(events: Iterable[dict[str, Any]], kept: int) -> SimilarLists:
    """Top `kept` goods per good by distinct customers who bought both, ties by code."""
    bought: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event["type"] == "crm.order.placed.v1":
            bought[event["subject"]].update(line["product_id"] for line in event["data"]["lines"])
    co: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for products in bought.values():
        goods = [p for p in products if is_goods(p)]
        for a in goods:
            for b in goods:
                if a != b:
                    co[a][b] += 1
    return {
        p: sorted(others.items(), key=lambda item: (-item[1], item[0]))[:kept]
        for p, others in co.items()
    }
