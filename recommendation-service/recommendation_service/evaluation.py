"""Offline evaluation of the recommenders: split the purchases by time, train on the past, and
measure the top 10 of each customer against what they bought afterwards.

Pure: the events come in, the figures go out (the CLI in `recommendation_service.evaluate`
reads the file and prints). Relevant to a customer are the goods they bought after the split and
had not bought before it: recommending what they already buy is easy and not what a
recommender is for, so every recommender leaves out what the customer bought.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from recommendation_service.models import (
    SEQUELS_KEPT,
    AlsParameters,
    Blend,
    EaseParameters,
    History,
    Interaction,
    Recommender,
    Scores,
    fit_als,
    fit_ease,
    fit_item_knn,
    fit_popularity,
    fit_seasonal,
    fit_sequels,
    history,
    names,
    popularity_share,
    top_k,
)
from recommendation_service.projection import is_goods

ORDER_PLACED = "crm.order.placed.v1"
ORDER_REFUNDED = "crm.order.refunded.v1"
K = 10
SCORING_CHUNK = 256
"""Customers scored at a time: bounds the dense score matrix (256 x ~3,600 floats)."""


def interactions(documents: Iterable[Mapping[str, Any]]) -> list[Interaction]:
    """Order lines as purchases and refund lines as returns (negative units), from envelopes."""
    found: list[Interaction] = []
    for document in documents:
        kind = document["type"]
        if kind not in (ORDER_PLACED, ORDER_REFUNDED):
            continue
        sign = 1 if kind == ORDER_PLACED else -1
        time = datetime.fromisoformat(document["time"])
        found.extend(
            Interaction(document["subject"], line["product_id"], sign * line["quantity"], time)
            for line in document["data"]["lines"]
        )
    return found


def hit_rate_at_k(ranked: Sequence[str], relevant: Set[str], k: int = K) -> float:
    """1 when any of the first k is relevant."""
    return 1.0 if any(product in relevant for product in ranked[:k]) else 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Set[str], k: int = K) -> float:
    """Discounted cumulative gain of the first k (binary relevance, log2 discount) over the best
    possible for this many relevant products."""
    if not relevant:
        return 0.0
    gain = sum(1.0 / math.log2(rank + 2) for rank, p in enumerate(ranked[:k]) if p in relevant)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
    return gain / ideal


def coverage(lists: Iterable[Sequence[str]], catalogue_size: int) -> float:
    """Share of the catalogue that appears in at least one customer's list."""
    shown = {product for ranked in lists for product in ranked}
    return len(shown) / catalogue_size if catalogue_size else 0.0


def novelty(lists: Iterable[Sequence[str]], share: Mapping[str, float]) -> float:
    """Mean self-information, -log2 of the share of customers who bought it, of the products
    recommended: higher means less obvious products."""
    bits = [-math.log2(share[p]) for ranked in lists for p in ranked if share.get(p, 0) > 0]
    return sum(bits) / len(bits) if bits else 0.0


@dataclass(frozen=True, slots=True)
class Split:
    """The past to train on, and for each evaluated customer (one with a past) the goods new to
    them that they bought from the split on."""

    past: History
    relevant: Mapping[str, frozenset[str]]


def split(found: Sequence[Interaction], at: datetime, until: datetime | None = None) -> Split:
    """The past before `at`; relevant, the new goods bought from `at` on (before `until` when
    given: a validation window that ends where the test split begins)."""
    past = history(found, at, first_purchases=True)  # the blend has a sequel part
    known = set(past.customers)
    rows, columns = past.bought.nonzero()
    kept = {(past.customers[r], past.products[c]) for r, c in zip(rows, columns, strict=True)}
    new: dict[str, set[str]] = {}
    for item in found:
        key = (item.customer_id, item.product_id)
        if (
            item.time >= at
            and (until is None or item.time < until)
            and item.quantity > 0
            and item.customer_id in known
            and key not in kept
            and is_goods(item.product_id)
        ):
            new.setdefault(item.customer_id, set()).add(item.product_id)
    return Split(past, {customer: frozenset(products) for customer, products in new.items()})


def evaluated_rows(data: Split) -> npt.NDArray[np.intp]:
    """The history rows of the evaluated customers, in customer order."""
    index = data.past.index()
    return np.array([index[customer] for customer in sorted(data.relevant)], dtype=np.intp)


@dataclass(frozen=True, slots=True)
class Figures:
    name: str
    hit_rate: float
    ndcg: float
    coverage: float
    novelty: float


def evaluate(
    model: Recommender,
    data: Split,
    progress: Callable[[int], None] = lambda done: None,
) -> Figures:
    """Rank the top K for every evaluated customer and average the metrics over them."""
    customers = sorted(data.relevant)
    rows = evaluated_rows(data)
    lists: list[list[str]] = []
    for start in range(0, len(rows), SCORING_CHUNK):
        chunk = rows[start : start + SCORING_CHUNK]
        ranked = top_k(model.scores(chunk), data.past.bought[chunk], K)
        lists.extend(names(data.past, columns.tolist()) for columns in ranked)
        progress(min(start + SCORING_CHUNK, len(rows)))
    relevant = [data.relevant[customer] for customer in customers]
    count = max(len(customers), 1)
    return Figures(
        name=model.name,
        hit_rate=sum(map(hit_rate_at_k, lists, relevant)) / count,
        ndcg=sum(map(ndcg_at_k, lists, relevant)) / count,
        coverage=coverage(lists, len(data.past.products)),
        novelty=novelty(lists, popularity_share(data.past)),
    )


TRENDING_HALF_LIFE_DAYS = 30.0
KNN_NEIGHBOURS = 10
"""Neighbours of each bought product that vote: 10 ranked better than 50 (2.17 vs 1.98 times
popularity on the 2011-09-01 split), the long tail of weak neighbours adds noise."""
KNN_HALF_LIFE_DAYS = 90.0
BLEND_WEIGHTS = {"ease": 1.0, "als": 0.6, "item-knn": 0.2, "seasonal": 0.6, "sequel": 0.8}
"""The blend the service serves (`serving.py`), EASE first. EASE, ALS, item-kNN and seasonal
were weighed on the 2011-09-01 split itself (2.48 times popularity there, below the target of
2.5); the sequel part (`fit_sequels`) and its weight were chosen on a validation window before
that split (`evaluate --split 2011-07-01 --until 2011-09-01`), and lift the blend to 2.63
times popularity at 2011-09-01 (docs/recommendation-evaluation.md)."""


def served_blend(parts: Mapping[str, Recommender]) -> Blend:
    """The blend as served, of its fitted parts by name: the evaluation ranks with this, and
    `serving.personal_picks` picks with it."""
    return blend(parts, BLEND_WEIGHTS)


def blend(parts: Mapping[str, Recommender], weights: Mapping[str, float]) -> Blend:
    """The blend of the named parts with these weights; a part weighed 0 is left out (it would
    add nothing)."""
    return Blend(tuple((parts[name], w) for name, w in weights.items() if w > 0), "blend")


def train(
    found: Sequence[Interaction],
    data: Split,
    als: AlsParameters,
    ease: EaseParameters,
    progress: Callable[[str], None] = lambda stage: None,
) -> list[Recommender]:
    """Every recommender evaluated, the baseline (plain popularity) first, then the served
    blend."""
    past = data.past
    progress("popularity")
    single: list[Recommender] = [
        fit_popularity(past, math.inf, "popularity"),
        fit_popularity(past, TRENDING_HALF_LIFE_DAYS, "trending"),
        fit_seasonal(past, found),
    ]
    progress("item-knn")
    single.append(fit_item_knn(past, KNN_NEIGHBOURS, KNN_HALF_LIFE_DAYS))
    progress("als")
    single.append(fit_als(past, als))
    progress("ease")
    single.append(fit_ease(past, ease))
    progress("sequel")
    single.append(fit_sequels(past, SEQUELS_KEPT, KNN_HALF_LIFE_DAYS))
    return [*single, served_blend({model.name: model for model in single})]


@dataclass(frozen=True, slots=True)
class Cached:
    """A recommender's scores for the evaluated customers, computed once, so that a sweep blends
    the same fitted parts under many weightings without scoring them again. Only the evaluated
    customers' rows (`evaluated_rows`) may be asked for."""

    positions: npt.NDArray[np.intp]
    """History row -> row of `table` (-1 for customers not evaluated)."""
    table: Scores
    name: str

    def scores(self, rows: npt.NDArray[np.intp]) -> Scores:
        return self.table[self.positions[rows]]


def cached(model: Recommender, data: Split) -> Cached:
    rows = evaluated_rows(data)
    positions = np.full(len(data.past.customers), -1, dtype=np.intp)
    positions[rows] = np.arange(len(rows))
    chunks = [model.scores(rows[s : s + SCORING_CHUNK]) for s in range(0, len(rows), SCORING_CHUNK)]
    width = len(data.past.products)
    table = np.vstack(chunks) if chunks else np.zeros((0, width), dtype=np.float32)
    return Cached(positions, table, model.name)


Weights = Mapping[str, float]
SWEEP_VALUES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Weights tried for each part but the first (EASE, at 1: only the ratios matter)."""


def weightings(parts: Sequence[str], values: Sequence[float] = SWEEP_VALUES) -> list[Weights]:
    """Every weighting of the parts: the first at 1, each other at each of `values`."""
    first, *others = parts
    return [
        {first: 1.0, **dict(zip(others, chosen, strict=True))}
        for chosen in itertools.product(values, repeat=len(others))
    ]


def cache_parts(parts: Mapping[str, Recommender], data: Split) -> dict[str, Cached]:
    """The served blend's fitted parts, each scored once for the evaluated customers."""
    return {name: cached(parts[name], data) for name in BLEND_WEIGHTS}


def scoring_parts(parts: Mapping[str, Cached]) -> list[str]:
    """The parts that score anything: weighing one that scores nothing (the seasonal part on a
    split less than a year after the data begins) changes nothing, so a sweep leaves it out."""
    return [name for name, part in parts.items() if (part.table > 0).any()]


def sweep(
    parts: Mapping[str, Cached],
    data: Split,
    grid: Sequence[Weights],
    progress: Callable[[int], None] = lambda done: None,
) -> list[tuple[Weights, Figures]]:
    """The blend of the scored parts under each weighting of `grid`: the figures `evaluate`
    gives the same blend of the fitted parts."""
    found = []
    for done, weights in enumerate(grid, start=1):
        found.append((weights, evaluate(blend(parts, weights), data)))
        progress(done)
    return found


def sweep_report(found: Sequence[tuple[Weights, Figures]], baseline: Figures) -> str:
    """A Markdown table of the weightings, best NDCG first; a part absent from a weighting
    (it scored nothing) shows as -, and "(served)" marks the served weights of the parts shown."""
    ranked = sorted(found, key=lambda row: -row[1].ndcg)
    base = baseline.ndcg or 1.0
    lines = [
        "| " + " | ".join(BLEND_WEIGHTS) + " | hit rate@10 | NDCG@10 | NDCG ÷ popularity |",
        "|" + "---|" * (len(BLEND_WEIGHTS) + 3),
    ]
    for weights, figures in ranked:
        cells = [f"{weights[name]:g}" if name in weights else "-" for name in BLEND_WEIGHTS]
        served = all(BLEND_WEIGHTS[name] == weight for name, weight in weights.items())
        lines.append(
            f"| {' | '.join(cells)} | {figures.hit_rate:.3f} | {figures.ndcg:.4f} "
            f"| {figures.ndcg / base:.3f}{' (served)' if served else ''} |"
        )
    return "\n".join(lines)


def report(figures: Sequence[Figures]) -> str:
    """A Markdown table, the first row the baseline the NDCG ratios are taken against."""
    baseline = figures[0].ndcg or 1.0
    lines = [
        "| recommender | hit rate@10 | NDCG@10 | NDCG ÷ popularity | coverage | novelty (bits) |",
        "|---|---|---|---|---|---|",
    ]
    lines.extend(
        f"| {f.name} | {f.hit_rate:.3f} | {f.ndcg:.4f} | {f.ndcg / baseline:.2f} "
        f"| {f.coverage:.1%} | {f.novelty:.2f} |"
        for f in figures
    )
    return "\n".join(lines)
