"""The personalised model as served: the evaluated blend (EASE + ALS + item-kNN + seasonal,
`evaluation.served_blend`), trained on what customers kept, and each customer's top-k picks
computed from it ahead of any request, each with the reason it was picked.

Pure: the worker reads the rows, calls these functions in a thread and writes what they return.
The EASE weights, the ALS product factors and the seasonal votes are the model version's (EASE
capped as the evaluation fits it: `EaseParameters`); the item-kNN part reads
the neighbour job's live similar products, so a new product enters customers' lists through
co-purchase before any retraining. A customer's ALS factors are solved from their own purchases
and the version's product factors (`implicit`'s `recalculate_user`), at a swap for everyone and
after their own events for them alone: one computation whatever the occasion.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import sparse
from threadpoolctl import threadpool_limits

from recommendation_service.evaluation import (
    BLEND_WEIGHTS,
    KNN_HALF_LIFE_DAYS,
    KNN_NEIGHBOURS,
    SCORING_CHUNK,
    served_blend,
)
from recommendation_service.models import (
    SECONDS_PER_DAY,
    SEQUELS_KEPT,
    Als,
    AlsParameters,
    DecayedPopularity,
    EaseParameters,
    Interaction,
    ItemKnn,
    Recommender,
    fit_als,
    fit_ease,
    fit_seasonal,
    fit_sequels,
    history,
    top_k,
)

PICKS_KEPT = 50
"""Picks stored per customer: a request asks for at most this many."""
MIN_PICK_SCORE = 1e-4
"""A product whose blended score is below this is no pick (each part's best counts its weight,
0.2 to 1): what ALS gives products nothing points to is rounding noise, not "bought by customers
who buy what you buy", and the reader tops the list up with popular goods instead."""

ReasonKind = Literal["bought-together", "bought-after", "similar-customers", "seasonal", "popular"]
REASON_TEXT: Mapping[ReasonKind, str] = {
    "bought-together": "bought together with {product}",
    "bought-after": "often bought after {product}",
    "similar-customers": "bought by customers who buy what you buy",
    "seasonal": "sells well at this time of year",
    "popular": "popular",
}
PART_REASONS: Mapping[str, ReasonKind] = {
    "ease": "bought-together",
    "item-knn": "bought-together",
    "als": "similar-customers",
    "seasonal": "seasonal",
    "sequel": "bought-after",
}
"""The reason each part of the blend gives when a pick owes most to it."""


@dataclass(frozen=True, slots=True)
class Kept:
    """A product a customer kept some of, with their first and last purchase of it."""

    customer_id: str
    product_id: str
    first_bought_at: datetime
    last_bought_at: datetime


@dataclass(frozen=True, slots=True)
class Neighbour:
    product_id: str
    other_product_id: str
    similarity: float


@dataclass(frozen=True, slots=True)
class ServingModel:
    """One trained version: the products it knows, their ALS factors, seasonal votes, EASE
    weights and sequel weights."""

    products: tuple[str, ...]
    product_factors: npt.NDArray[np.float32]
    seasonal: npt.NDArray[np.float32]
    ease: sparse.csr_matrix
    """products x products: each product's kept EASE weights towards others (`fit_ease`)."""
    sequels: sparse.csr_matrix
    """products x products: each product's kept sequel weights towards others (`fit_sequels`)."""
    parameters: AlsParameters
    ease_parameters: EaseParameters
    data_as_of: datetime
    """Just after the newest purchase trained on: the time recency weights are measured from."""

    def item_weights(self) -> dict[str, sparse.csr_matrix]:
        """The product-to-product weights, by the blend's part they belong to, as stored."""
        return {"ease": self.ease, "sequel": self.sequels}

    def described(self) -> dict[str, Any]:
        """The parameters as stored with the version."""
        return {
            "als": asdict(self.parameters),
            "ease": asdict(self.ease_parameters),
            "blend_weights": dict(BLEND_WEIGHTS),
            "knn_neighbours": KNN_NEIGHBOURS,
            "knn_half_life_days": KNN_HALF_LIFE_DAYS,
            "sequels_kept": SEQUELS_KEPT,
        }


@dataclass(frozen=True, slots=True)
class Reason:
    kind: ReasonKind
    product_id: str | None = None
    """With bought-together and bought-after: the customer's product the pick was bought with,
    or after."""
    text: str = field(init=False, repr=False, compare=False)
    """Formatted once, when made: `personal_picks` gives one Reason to all the picks that have
    it, so the documents of a batch's tens of thousands of picks (`pick_document`) do not format
    it each."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", REASON_TEXT[self.kind].format(product=self.product_id))


@dataclass(frozen=True, slots=True)
class Pick:
    product_id: str
    score: float
    reason: Reason


def train(kept: Sequence[Kept], parameters: AlsParameters, ease: EaseParameters) -> ServingModel:
    """Fit ALS, EASE, the sequels and the seasonal votes on what customers kept, as the
    evaluation trains them.

    The projection keeps each customer's first and last purchase of a product, not every order:
    the last one dates the purchase for recency, the first orders purchases for the sequels, and
    either counts it in a season."""
    if not kept:
        raise ValueError("nothing to train on: no customer kept any goods")
    data_as_of = max(item.last_bought_at for item in kept) + timedelta(seconds=1)
    purchases = [
        *(Interaction(k.customer_id, k.product_id, 1, k.last_bought_at) for k in kept),
        *(Interaction(k.customer_id, k.product_id, 1, k.first_bought_at) for k in kept),
    ]
    past = history(purchases, data_as_of, first_purchases=True)
    als = fit_als(past, parameters)
    if not np.all(np.isfinite(als.product_factors)):
        raise ArithmeticError("ALS diverged: its product factors are not all finite")
    seasonal = fit_seasonal(past, purchases)
    return ServingModel(
        past.products,
        als.product_factors,
        seasonal.votes,
        fit_ease(past, ease).similar.astype(np.float32),
        fit_sequels(past, SEQUELS_KEPT, KNN_HALF_LIFE_DAYS).similar.astype(np.float32),
        parameters,
        ease,
        data_as_of,
    )


def model_from_rows(
    rows: Iterable[tuple[str, Sequence[float], float]],
    item_weights: Mapping[str, Iterable[tuple[str, str, float]]],
    parameters: Mapping[str, Any],
    data_as_of: datetime,
) -> ServingModel:
    """A stored version back in memory: (product, factors, seasonal vote) rows, sorted here, and
    by part (`ServingModel.item_weights`), (product, other product, weight) rows (none for a
    part the version did not store)."""
    ordered = sorted(rows, key=lambda row: row[0])
    als = AlsParameters(**parameters["als"])
    index = {row[0]: n for n, row in enumerate(ordered)}

    def matrix(part: str) -> sparse.csr_matrix:
        weights = list(item_weights.get(part, ()))
        return sparse.csr_matrix(
            (
                np.array([row[2] for row in weights], dtype=np.float32),
                ([index[row[0]] for row in weights], [index[row[1]] for row in weights]),
            ),
            shape=(len(ordered), len(ordered)),
        )

    return ServingModel(
        tuple(row[0] for row in ordered),
        np.array([row[1] for row in ordered], dtype=np.float32).reshape(-1, als.factors),
        np.array([row[2] for row in ordered], dtype=np.float32),
        matrix("ease"),
        matrix("sequel"),
        als,
        # a version trained before EASE was served has no weights: `outdated` replaces it
        EaseParameters(**parameters.get("ease", {})),
        data_as_of,
    )


def outdated(parameters: Mapping[str, Any]) -> bool:
    """Whether a stored version was trained for another blend than the one served now (one from
    before EASE was served): the trainer replaces it at once instead of within the hour."""
    return parameters.get("blend_weights") != BLEND_WEIGHTS


def customer_factors(model: ServingModel, weights: sparse.csr_matrix) -> npt.NDArray[np.float32]:
    """ALS factors of customers (rows of recency weights over the model's products), solved
    against the model's product factors as a training step would."""
    from implicit.cpu.als import AlternatingLeastSquares  # heavy import, only when needed

    parameters = model.parameters
    solver = AlternatingLeastSquares(
        factors=parameters.factors,
        regularization=parameters.regularization,
        alpha=parameters.alpha,
        num_threads=1,
    )
    solver.item_factors = model.product_factors
    with threadpool_limits(1, "blas"):
        found = solver.recalculate_user(np.arange(weights.shape[0]), weights.astype(np.float32))
    return np.asarray(found, dtype=np.float32).reshape(weights.shape[0], parameters.factors)


def personal_picks(
    model: ServingModel,
    customers: Sequence[str],
    kept: Iterable[Kept],
    neighbours: Iterable[Neighbour],
    k: int = PICKS_KEPT,
) -> dict[str, list[Pick]]:
    """Each customer's `k` best products by the blend, never one they kept or bought, each with
    the part of the blend it owes most to (for item-kNN and EASE, the customer's product that
    voted most).
    Goods only: the neighbours and the model hold nothing else. Customers who kept nothing, or
    have no pick, are absent: the reader falls back to popular products."""
    columns = {product: n for n, product in enumerate(model.products)}
    neighbours_list = list(neighbours)
    for pair in neighbours_list:
        for product in (pair.product_id, pair.other_product_id):
            columns.setdefault(product, len(columns))
    rows = {customer: n for n, customer in enumerate(customers)}
    owned = [item for item in kept if item.customer_id in rows]
    if not owned:
        return {}
    for item in owned:
        columns.setdefault(item.product_id, len(columns))
    shape = (len(rows), len(columns))
    row_index = [rows[item.customer_id] for item in owned]
    column_index = [columns[item.product_id] for item in owned]
    ages = np.array(
        [
            max((model.data_as_of - item.last_bought_at).total_seconds(), 0.0) / SECONDS_PER_DAY
            for item in owned
        ]
    )

    def recency(half_life_days: float) -> sparse.csr_matrix:
        weights = 0.5 ** (ages / half_life_days)
        return sparse.csr_matrix((weights, (row_index, column_index)), shape=shape)

    known = len(model.products)
    als_weights = recency(model.parameters.half_life_days)[:, :known]
    padding = np.zeros((len(columns) - known, model.parameters.factors), dtype=np.float32)
    similar = sparse.csr_matrix(
        (
            [pair.similarity for pair in neighbours_list],
            (
                [columns[pair.product_id] for pair in neighbours_list],
                [columns[pair.other_product_id] for pair in neighbours_list],
            ),
        ),
        shape=(len(columns), len(columns)),
    )
    seeds = recency(KNN_HALF_LIFE_DAYS)
    bought = sparse.csr_matrix((np.ones(len(owned)), (row_index, column_index)), shape=shape)

    def padded(weights: sparse.csr_matrix) -> sparse.csr_matrix:
        found = weights.tocoo()
        return sparse.csr_matrix(
            (found.data, (found.row, found.col)), shape=(len(columns), len(columns))
        )

    ease_weights = padded(model.ease)
    sequel_weights = padded(model.sequels)
    parts: dict[str, Recommender] = {
        "ease": ItemKnn(ease_weights, bought, "ease"),
        "sequel": ItemKnn(sequel_weights, seeds, "sequel"),
        "item-knn": ItemKnn(similar, seeds),
        "als": Als(
            customer_factors(model, als_weights), np.vstack([model.product_factors, padding])
        ),
        "seasonal": DecayedPopularity(
            np.concatenate([model.seasonal, np.zeros(len(columns) - known, np.float32)]), "seasonal"
        ),
    }
    blend = served_blend(parts)
    buyers = {item.customer_id for item in owned}
    products = list(columns)
    names = [part.name for part, _ in blend.parts]
    picks: dict[str, list[Pick]] = {}
    # by (part, column of the customer's product that voted, or -1): one Reason for all the
    # picks that give it
    reasons: dict[tuple[int, int], Reason] = {}
    for start in range(0, len(customers), SCORING_CHUNK):
        chunk = np.arange(start, min(start + SCORING_CHUNK, len(customers)), dtype=np.intp)
        part_scores = blend.part_scores(chunk)
        total = np.sum(part_scores, axis=0)
        chosen = [
            columns_kept if customers[row] in buyers else columns_kept[:0]
            for offset, (row, found) in enumerate(
                zip(chunk.tolist(), top_k(total, bought[chunk], k), strict=True)
            )
            for columns_kept in [found[total[offset, found] >= MIN_PICK_SCORE]]
        ]
        voters = {
            "item-knn": strongest_seeds(seeds[chunk], similar, chosen),
            "ease": strongest_seeds(bought[chunk], ease_weights, chosen),
            "sequel": strongest_seeds(seeds[chunk], sequel_weights, chosen),
        }
        # the chunk's picks at once, customer after customer, not a Python pass per customer
        lengths = [len(found) for found in chosen]
        offsets = np.repeat(np.arange(len(chunk), dtype=np.intp), lengths)
        picked = np.concatenate(chosen)
        owing = np.argmax(np.stack([part[offsets, picked] for part in part_scores]), axis=0)
        voter = np.full(len(picked), -1, dtype=np.intp)
        for n, name in enumerate(names):
            if name in voters:
                owed = owing == n
                voter[owed] = np.concatenate(voters[name])[owed]
        # round(score, 6) in numpy: it scales by 1e6 (exact in float64 for a float32 score),
        # rounds half to even and divides back to the nearest float, as Python's round does
        scores = np.round(total[offsets, picked].astype(np.float64), 6)
        owed_to = list(zip(owing.tolist(), voter.tolist(), strict=True))
        for part, column in set(owed_to) - reasons.keys():
            reasons[part, column] = _reason(names[part], products, column)
        chunk_picks = [
            Pick(products[column], score, reasons[why])
            for column, score, why in zip(picked.tolist(), scores.tolist(), owed_to, strict=True)
        ]
        end = 0
        for row, length in zip(chunk.tolist(), lengths, strict=True):
            if length:
                picks[customers[row]] = chunk_picks[end : end + length]
            end += length
    return picks


def strongest_seeds(
    seeds: sparse.csr_matrix, similar: sparse.csr_matrix, chosen: Sequence[npt.NDArray[np.intp]]
) -> list[npt.NDArray[np.intp]]:
    """For each row and each of its chosen columns, the row's product (a column of `seeds`)
    whose weighted similarity to it is the largest, the first in column order on a tie (-1 when
    none points to it): every (row, chosen, product of the row) triple at once, not a sparse
    slice per row, and each pair's best by a maximum over its adjacent triples, not a sort of
    them all (most votes are 0: sorting the ties took most of the picks' time)."""
    lengths = np.array([len(columns) for columns in chosen], dtype=np.intp)
    pair_row = np.repeat(np.arange(len(chosen), dtype=np.intp), lengths)
    pair_column = np.concatenate(chosen).astype(np.intp) if len(pair_row) else pair_row
    owned = np.diff(seeds.indptr)[pair_row]
    pair_of = np.repeat(np.arange(len(pair_row), dtype=np.intp), owned)
    first_of_pair = np.cumsum(owned) - owned
    at = np.repeat(seeds.indptr[pair_row], owned) + (
        np.arange(len(pair_of), dtype=np.intp) - np.repeat(first_of_pair, owned)
    )
    product = seeds.indices[at]
    votes = seeds.data[at] * np.asarray(similar[product, pair_column[pair_of]]).ravel()
    top = np.zeros(len(pair_row), dtype=votes.dtype)
    voted = owned > 0
    top[voted] = np.maximum.reduceat(votes, first_of_pair[voted])
    strong = np.flatnonzero((votes > 0) & (votes == top[pair_of]))
    leads = strong[np.diff(pair_of[strong], prepend=-1) != 0]  # on a tie, the row's first product
    best = np.full(len(pair_row), -1, dtype=np.intp)
    best[pair_of[leads]] = product[leads]
    return np.split(best, np.cumsum(lengths)[:-1])


def _reason(part: str, products: Sequence[str], voter: int) -> Reason:
    """Why a pick was chosen: the reason of the part it owes most to, with, for a part that
    votes through the customer's products, the one that voted most (`voter`, a column of
    `products`; -1 when none did, or the part does not vote so)."""
    kind = PART_REASONS[part]
    if kind in ("bought-together", "bought-after"):
        return Reason(kind, products[voter]) if voter >= 0 else Reason("similar-customers")
    return Reason(kind)


def pick_document(pick: Pick, description: str | None) -> dict[str, Any]:
    """A pick as stored and served."""
    return {
        "product_id": pick.product_id,
        "description": description,
        "score": pick.score,
        "reason": {
            "kind": pick.reason.kind,
            "product_id": pick.reason.product_id,
            "text": pick.reason.text,
        },
    }


def training_due(
    trained_at: datetime | None, requested: bool, now: datetime, interval_seconds: float
) -> bool:
    """Whether to train now: on request, when no version exists, or when the current one is
    `interval_seconds` old (wall-clock: this schedules work, it decides nothing in the view)."""
    if requested or trained_at is None:
        return True
    return (now - trained_at).total_seconds() >= interval_seconds
