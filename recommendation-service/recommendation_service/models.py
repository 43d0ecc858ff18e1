"""The recommenders, as pure functions over a customer-by-product history: decayed popularity,
item-kNN with cosine similarity on co-purchase, ALS on implicit feedback, and their blend.

No I/O and no clock: the time a model is trained at is passed in. The offline evaluation
(`recommendation_service.evaluation`) trains and ranks with them; the service's neighbour job
stores what `similar_products` computes, the evaluated item-kNN's neighbours.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy import sparse
from threadpoolctl import threadpool_limits

from recommendation_service.projection import is_goods

Scores = npt.NDArray[np.float32]
"""customers x products: higher is better; 0 or below is never recommended."""
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Interaction:
    """Units of a product a customer bought (positive) or returned (negative) at a time."""

    customer_id: str
    product_id: str
    quantity: int
    time: datetime


@dataclass(frozen=True, slots=True)
class History:
    """What customers bought before `trained_at`, as sparse customer x product matrices.

    A customer counts as a buyer of a product while they kept some of it: units bought minus
    units returned above zero. Refunds are negative signals, and a fully returned product is
    neither a seed of their recommendations nor a vote for it. Only goods (`is_goods`) appear.
    """

    customers: tuple[str, ...]
    products: tuple[str, ...]
    trained_at: datetime
    bought: sparse.csr_matrix
    """1 where the customer kept some of the product."""
    last_bought_age_days: sparse.csr_matrix
    """Days from the customer's last purchase of the product to `trained_at` (same pattern, + 1
    so that a purchase at the training time is not a structural zero)."""
    first_bought_age_days: sparse.csr_matrix | None
    """Days from the customer's first purchase of the product to `trained_at` (same pattern and
    offset): what they went on to buy after it (`fit_sequels`). None unless `history` was asked
    for the first purchases: only the sequel part reads them."""

    @property
    def buyers(self) -> npt.NDArray[np.float64]:
        """Distinct buyers per product."""
        return np.asarray(self.bought.sum(axis=0)).ravel()

    def index(self) -> dict[str, int]:
        return {customer: row for row, customer in enumerate(self.customers)}


def history(
    interactions: Iterable[Interaction], trained_at: datetime, *, first_purchases: bool = False
) -> History:
    """The history of the goods bought or returned before `trained_at`; with `first_purchases`
    also when each customer first bought each product (`History.first_bought_age_days`), which
    costs a second date per pair that only the sequel part needs."""
    kept: dict[tuple[str, str], int] = {}
    last: dict[tuple[str, str], datetime] = {}
    first: dict[tuple[str, str], datetime] | None = {} if first_purchases else None
    for item in interactions:
        if item.time >= trained_at or not is_goods(item.product_id):
            continue
        key = (item.customer_id, item.product_id)
        kept[key] = kept.get(key, 0) + item.quantity
        if item.quantity > 0:
            if key not in last or item.time > last[key]:
                last[key] = item.time
            if first is not None and (key not in first or item.time < first[key]):
                first[key] = item.time
    pairs = sorted(key for key, units in kept.items() if units > 0 and key in last)
    customers = tuple(sorted({customer for customer, _ in pairs}))
    products = tuple(sorted({product for _, product in pairs}))
    rows = {customer: n for n, customer in enumerate(customers)}
    columns = {product: n for n, product in enumerate(products)}
    row_index = np.fromiter((rows[c] for c, _ in pairs), dtype=np.int32, count=len(pairs))
    column_index = np.fromiter((columns[p] for _, p in pairs), dtype=np.int32, count=len(pairs))
    shape = (len(customers), len(products))

    def ages(times: Mapping[tuple[str, str], datetime]) -> sparse.csr_matrix:
        days = np.fromiter(
            ((trained_at - times[pair]).total_seconds() / SECONDS_PER_DAY + 1.0 for pair in pairs),
            dtype=np.float64,
            count=len(pairs),
        )
        return sparse.csr_matrix((days, (row_index, column_index)), shape=shape)

    ones = np.ones(len(pairs), dtype=np.float64)
    return History(
        customers=customers,
        products=products,
        trained_at=trained_at,
        bought=sparse.csr_matrix((ones, (row_index, column_index)), shape=shape),
        last_bought_age_days=ages(last),
        first_bought_age_days=None if first is None else ages(first),
    )


def recency_weights(past: History, half_life_days: float) -> sparse.csr_matrix:
    """The bought matrix with each purchase weighted by the decay of its last purchase."""
    weights = past.last_bought_age_days.copy()
    weights.data = 0.5 ** ((weights.data - 1.0) / half_life_days)
    return weights


class Recommender(Protocol):
    """Scores every product for some customers (rows of the history they were trained on)."""

    @property
    def name(self) -> str: ...

    def scores(self, rows: npt.NDArray[np.intp]) -> Scores: ...


@dataclass(frozen=True, slots=True)
class DecayedPopularity:
    """Trending goods: each buyer votes for a product with the decayed weight of their last
    purchase of it. The same list for everyone: the baseline and the fallback."""

    votes: npt.NDArray[np.float32]
    name: str

    def scores(self, rows: npt.NDArray[np.intp]) -> Scores:
        return np.broadcast_to(self.votes, (len(rows), len(self.votes))).copy()


def fit_popularity(past: History, half_life_days: float, name: str) -> DecayedPopularity:
    """Popular goods by decayed distinct buyers; `math.inf` half-life: plain distinct buyers."""
    votes = np.asarray(recency_weights(past, half_life_days).sum(axis=0)).ravel()
    return DecayedPopularity(votes.astype(np.float32), name)


SEASON_DAYS = 100
"""The seasonal recommender looks at this many days, starting a year before training time."""


def fit_seasonal(past: History, interactions: Iterable[Interaction]) -> DecayedPopularity:
    """What sold in the coming weeks a year ago: distinct buyers per product between 365 days
    before the training time and SEASON_DAYS later (gifts and decorations sell in season).
    All zeros when the history is shorter than a year."""
    start = past.trained_at - timedelta(days=365)
    end = start + timedelta(days=SEASON_DAYS)
    columns = {product: column for column, product in enumerate(past.products)}
    buyers = {
        (item.customer_id, columns[item.product_id])
        for item in interactions
        if item.quantity > 0 and start <= item.time < end and item.product_id in columns
    }
    votes = np.zeros(len(past.products), dtype=np.float32)
    np.add.at(votes, [column for _, column in buyers], 1.0)
    return DecayedPopularity(votes, "seasonal")


@dataclass(frozen=True, slots=True)
class ItemKnn:
    """Item-kNN: a candidate's score is the sum of its cosine similarities to what the customer
    bought, each purchase weighted by its recency, over each product's `neighbours` most
    similar products only. EASE (`fit_ease`) scores the same way with its learned weights."""

    similar: sparse.csr_matrix
    """products x products, row i: the neighbours of i and their weight (cosine for item-kNN)."""
    seeds: sparse.csr_matrix
    """customers x products: recency-weighted purchases."""
    name: str = "item-knn"

    def scores(self, rows: npt.NDArray[np.intp]) -> Scores:
        return np.asarray((self.seeds[rows] @ self.similar).todense(), dtype=np.float32)


SIMILARITY_BLOCK = 512
"""Products whose rows of co-buyer counts are computed at a time: bounds the memory to a block
by the catalogue (512 x 3,600 floats for the UCI data), not the catalogue squared."""


def best_per_row(
    values: npt.NDArray[np.float64], kept: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(rows, columns) of each row's `kept` largest positive values, ties by column: a partition
    finds each row's k-th value, and only the values at or above it are sorted."""
    if values.shape[1] > kept:
        kth = -np.partition(-values, kept - 1, axis=1)[:, kept - 1]
        candidates = (values >= kth[:, None]) & (values > 0)
    else:
        candidates = values > 0
    rows, columns = np.nonzero(candidates)
    order = np.lexsort((columns, -values[rows, columns], rows))
    rows, columns = rows[order], columns[order]
    starts = np.searchsorted(rows, rows, side="left")
    first_k = np.arange(len(rows)) - starts < kept
    return rows[first_k], columns[first_k]


@dataclass(frozen=True, slots=True)
class CosineBlock:
    """Some products' rows of distinct co-buyers and cosine against every product (dense)."""

    rows: npt.NDArray[np.intp]
    co: npt.NDArray[np.float64]
    similarity: npt.NDArray[np.float64]


def cosine_blocks(
    items: sparse.csr_matrix, buyers: npt.NDArray[np.float64], rows: npt.NDArray[np.intp]
) -> Iterator[CosineBlock]:
    """The `rows` of products x customers `items`, SIMILARITY_BLOCK at a time: shared buyers
    (0 with itself) over the square root of the product of both buyer counts (`buyers`, one per
    product), so equal ratios tie exactly and the value is the same whichever side computes it.
    """
    for start in range(0, len(rows), SIMILARITY_BLOCK):
        block = rows[start : start + SIMILARITY_BLOCK]
        co = (items[block] @ items.T).toarray()
        co[np.arange(len(block)), block] = 0.0
        yield CosineBlock(block, co, co / np.sqrt(np.outer(buyers[block], buyers)))


@dataclass(frozen=True, slots=True)
class Neighbours:
    """Each product's most similar products: cosine and distinct co-buyers, same pattern."""

    similarity: sparse.csr_matrix
    co_buyers: sparse.csr_matrix


def nearest_neighbours(bought: sparse.csr_matrix, kept: int) -> Neighbours:
    """Each product's `kept` most similar products by cosine of their buyer sets
    (`cosine_blocks`). Unlike a raw count of shared buyers it does not make every product
    similar to the bestsellers. Ties by product order; a function of `bought` alone, whatever
    order the purchases came in."""
    items = bought.T.tocsr().astype(np.float64)
    count = items.shape[0]
    buyers = np.maximum(np.asarray(items.sum(axis=1)).ravel(), 1.0)
    rows: list[npt.NDArray[np.intp]] = []
    columns: list[npt.NDArray[np.intp]] = []
    similarities: list[npt.NDArray[np.float64]] = []
    counts: list[npt.NDArray[np.float64]] = []
    for block in cosine_blocks(items, buyers, np.arange(count)):
        block_rows, best_columns = best_per_row(block.similarity, kept)
        rows.append(block.rows[block_rows])
        columns.append(best_columns)
        similarities.append(block.similarity[block_rows, best_columns])
        counts.append(block.co[block_rows, best_columns])

    def matrix(values: list[npt.NDArray[np.float64]]) -> sparse.csr_matrix:
        if not values:
            return sparse.csr_matrix((count, count))
        index = (np.concatenate(rows), np.concatenate(columns))
        return sparse.csr_matrix((np.concatenate(values), index), shape=(count, count))

    return Neighbours(matrix(similarities), matrix(counts))


def fit_item_knn(past: History, neighbours: int, half_life_days: float) -> ItemKnn:
    similar = nearest_neighbours(past.bought, neighbours).similarity
    return ItemKnn(similar, recency_weights(past, half_life_days))


@dataclass(frozen=True, slots=True)
class EaseParameters:
    regularization: float = 200.0
    """lambda, added to the Gram matrix's diagonal: 200 to 800 ranked alike on the UCI data."""
    kept: int = 100
    """Weights kept per product, the largest in absolute value (negative weights matter)."""
    max_products: int = 5_000
    """Only the most-bought goods enter the dense products x products matrix (8 x max_products^2
    bytes, several times over while it is inverted): a cap for catalogues of 100,000 goods."""


EASE_BLOCK_ROWS = 256
"""Rows of the dense EASE weights ranked at a time: ranking makes several copies of what it
ranks, which for the whole matrix tripled the training's peak memory."""


def _largest_per_row(
    weights: npt.NDArray[np.float64] | sparse.csr_matrix, kept: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """`best_per_row` of the weights' absolute values, a block of rows at a time (each row is
    ranked alone, so the result is the same as for the whole matrix at once)."""
    rows: list[npt.NDArray[np.intp]] = []
    columns: list[npt.NDArray[np.intp]] = []
    for start in range(0, weights.shape[0], EASE_BLOCK_ROWS):
        block = weights[start : start + EASE_BLOCK_ROWS]
        dense = block if isinstance(block, np.ndarray) else block.toarray()
        block_rows, block_columns = best_per_row(np.abs(dense), kept)
        rows.append(block_rows + start)
        columns.append(block_columns)
    if not rows:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    return np.concatenate(rows), np.concatenate(columns)


def fit_ease(past: History, parameters: EaseParameters) -> ItemKnn:
    """EASE (Steck 2019), a linear item-item model with a closed form: B = I - P diag(1/diag P),
    P = (X^T X + lambda I)^-1, diag B = 0; a customer's score for j is the sum of B[i, j] over
    the products i they kept. Only the `max_products` most-bought goods (ties by product order)
    take part, and each keeps its `kept` largest weights: scored like item-kNN, over these."""
    buyers = past.buyers
    order = np.lexsort((np.arange(len(buyers)), -buyers))
    chosen = np.sort(order[: parameters.max_products])
    bought = past.bought[:, chosen].astype(np.float64)
    gram = (bought.T @ bought).toarray()
    gram[np.diag_indices_from(gram)] += parameters.regularization
    with threadpool_limits(1, "blas"):  # the same figures every run, and one core of two
        weights = np.linalg.inv(gram)
    del gram  # the worker trains beside its fold: at most two dense matrices alive at once
    weights /= -np.diag(weights).copy()[None, :]
    np.fill_diagonal(weights, 0.0)
    rows, columns = _largest_per_row(weights, parameters.kept)
    count = len(past.products)
    similar = sparse.csr_matrix(
        (weights[rows, columns], (chosen[rows], chosen[columns])), shape=(count, count)
    )
    return ItemKnn(similar, past.bought, "ease")


SEQUEL_GAP_DAYS = 0.5
"""A product counts as bought after another when the customer's first purchase of it came more
than this after their first purchase of the other: in a later order, not the same basket."""
SEQUELS_KEPT = 50
"""Weights kept per product for the sequel part, the largest (docs/recommendation-evaluation.md)."""
SEQUEL_PAIRS_BLOCK = 1_000_000
"""Ordered pairs gathered before they are added to the counts: bounds the memory of the lists."""


def _sequel_starts(
    days: npt.NDArray[np.float64], ends: npt.NDArray[np.intp]
) -> npt.NDArray[np.intp]:
    """For each entry of `days` (each customer's first-purchase ages, oldest first, a customer's
    entries ending before `ends`), the first entry of its customer bought after it: the first
    whose age is more than SEQUEL_GAP_DAYS below. The test is `age_i - age_j > gap` exactly as
    it reads, and a rounded difference only grows as age_j falls, so every customer's entries
    split once, found by a bisection of all entries at the same time."""
    low = np.arange(len(days))  # never after: age_i - age_i is 0
    high = ends.copy()  # the customer's end stands for "after"
    while True:
        open_ = high - low > 1
        if not open_.any():
            return high
        middle = (low + high) // 2  # low itself where closed, whose test is false
        after = days - days[middle] > SEQUEL_GAP_DAYS
        high = np.where(open_ & after, middle, high)
        low = np.where(open_ & ~after, middle, low)


def sequel_counts(past: History) -> sparse.csr_matrix:
    """products x products: in row i, column j, the customers who kept both i and j and first
    bought j after first buying i (`SEQUEL_GAP_DAYS`). Unlike co-purchase it has a direction:
    what people go on to buy, which is what a recommendation for the weeks ahead foresees.

    Vectorised over customers: each customer's products sorted oldest first purchase first, the
    products bought after one are a run up to the customer's end (`_sequel_starts`), and the
    pairs are those runs laid end to end, SEQUEL_PAIRS_BLOCK at a time."""
    ages = past.first_bought_age_days
    if ages is None:
        raise ValueError("sequels need the first purchases: history(..., first_purchases=True)")
    count = len(past.products)
    customers = np.repeat(np.arange(ages.shape[0]), np.diff(ages.indptr))
    order = np.lexsort((-ages.data, customers))
    days, products = ages.data[order], ages.indices[order]
    ends = ages.indptr[1:][customers].astype(np.intp)  # sorting kept each customer's span
    starts = _sequel_starts(days, ends)
    runs = ends - starts
    total = sparse.csr_matrix((count, count), dtype=np.float32)
    done = np.concatenate(([0], np.cumsum(runs)))
    first = 0
    while first < len(runs):
        # entries whose pairs end within the next block (at least one, however long its run)
        last = max(
            int(np.searchsorted(done, done[first] + SEQUEL_PAIRS_BLOCK, "right")) - 1, first + 1
        )
        block = slice(first, last)
        lengths = runs[block]
        offsets = np.repeat(starts[block] - (done[block] - done[first]), lengths)
        later = products[np.arange(int(lengths.sum())) + offsets]
        earlier = np.repeat(products[block], lengths)
        ones = np.ones(len(later), dtype=np.float32)  # counts stay exact below 2**24
        total = total + sparse.csr_matrix((ones, (earlier, later)), shape=(count, count))
        first = last
    return total


def fit_sequels(past: History, kept: int, half_life_days: float) -> ItemKnn:
    """Sequels: a candidate's score is the sum, over what the customer bought (weighted by its
    recency), of how often buyers of that product went on to buy the candidate
    (`sequel_counts`), over the square root of both products' buyer counts, as cosine does. Each
    product keeps its `kept` largest weights."""
    weights = sequel_counts(past)  # scaled in place: the counts are the largest matrix here
    scale = (1.0 / np.sqrt(np.maximum(past.buyers, 1.0))).astype(np.float32)
    weights.data *= scale[np.repeat(np.arange(weights.shape[0]), np.diff(weights.indptr))]
    weights.data *= scale[weights.indices]
    rows, columns = _largest_per_row(weights, kept)
    chosen = sparse.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=weights.shape)
    similar = sparse.csr_matrix(weights.multiply(chosen))
    return ItemKnn(similar, recency_weights(past, half_life_days), "sequel")


@dataclass(frozen=True, slots=True)
class Als:
    """Matrix factorisation of implicit feedback (Hu, Koren and Volinsky 2008) with the
    `implicit` library: a customer's score for a product is the dot product of their factors."""

    customer_factors: npt.NDArray[np.float32]
    product_factors: npt.NDArray[np.float32]
    name: str = "als"

    def scores(self, rows: npt.NDArray[np.intp]) -> Scores:
        return np.asarray(self.customer_factors[rows] @ self.product_factors.T, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class AlsParameters:
    factors: int = 64
    regularization: float = 0.1
    alpha: float = 2.0
    iterations: int = 15
    half_life_days: float = 90.0
    """Confidence of a purchase: 1 + alpha x its recency weight."""
    seed: int = 7


def fit_als(past: History, parameters: AlsParameters) -> Als:
    """Deterministic for a seed: one thread, and BLAS limited to one (as `implicit` advises)."""
    from implicit.cpu.als import AlternatingLeastSquares  # heavy import, only when training

    weights = recency_weights(past, parameters.half_life_days).astype(np.float32)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=parameters.factors,
            regularization=parameters.regularization,
            alpha=parameters.alpha,
            iterations=parameters.iterations,
            random_state=parameters.seed,
            num_threads=1,
        )
        model.fit(weights.tocsr(), show_progress=False)
    return Als(
        np.asarray(model.user_factors, dtype=np.float32),
        np.asarray(model.item_factors, dtype=np.float32),
    )


@dataclass(frozen=True, slots=True)
class Blend:
    """A weighted sum of recommenders whose scores are first scaled per customer to [0, 1] (by
    the customer's best score), so that no model dominates by the size of its numbers."""

    parts: tuple[tuple[Recommender, float], ...]
    name: str = "blend"

    def scores(self, rows: npt.NDArray[np.intp]) -> Scores:
        total = np.zeros((len(rows), 0), dtype=np.float32)
        for part in self.part_scores(rows):
            total = part if total.size == 0 else total + part
        return total

    def part_scores(self, rows: npt.NDArray[np.intp]) -> list[Scores]:
        """Each part's scaled and weighted scores, in `parts` order: what the sum is made of,
        and what tells which model a recommendation owes most to."""
        return [scaled(model.scores(rows)) * np.float32(weight) for model, weight in self.parts]


def scaled(scores: Scores) -> Scores:
    """Each row divided by its largest value (rows with nothing positive stay as they are), and
    negatives raised to 0."""
    top = scores.max(axis=1, keepdims=True)
    divisor = np.where(top > 0, top, 1.0)
    return (np.maximum(scores, 0.0) / divisor).astype(np.float32)


def top_k(scores: Scores, already: sparse.csr_matrix, k: int) -> list[npt.NDArray[np.intp]]:
    """Each row's `k` best product columns, best first, ties broken by column (product code
    order). Only positive scores: a model recommends nothing it has no reason for. Leaves out
    `already` (what the customer bought)."""
    masked = scores.copy()
    masked[already.nonzero()] = 0.0
    order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    return [row[masked[n, row] > 0] for n, row in enumerate(order)]


def popularity_share(past: History) -> Mapping[str, float]:
    """Share of the customers who bought each product: what novelty is measured against."""
    shares = past.buyers / max(len(past.customers), 1)
    return dict(zip(past.products, shares.tolist(), strict=True))


def names(past: History, columns: Sequence[int]) -> list[str]:
    return [past.products[column] for column in columns]


SimilarPair = tuple[str, str]
"""(product, similar product)"""
Similar = tuple[int, float]
"""(distinct co-buyers, cosine)"""


@dataclass(frozen=True, slots=True)
class KeptGoods:
    """Who kept which goods, numbered: buyer `buyers[n]` kept `products[goods[n]]`. A few bytes a
    pair, not Python objects: the neighbour job reads every pair, and they grow with the data."""

    products: Sequence[str]
    """In code-point order (what `sorted` gives), which breaks ties between similar goods."""
    buyers: npt.NDArray[np.intp]
    goods: npt.NDArray[np.intp]
    customers: Sequence[str]
    """Buyer n's customer id ("" for a number no buyer has: `neighbours.KeptBuyers` reuses them)."""


def similar_products(
    kept: Iterable[tuple[str, str]], neighbours: int
) -> dict[SimilarPair, Similar]:
    """`kept_similar_products` of the distinct (customer, product) pairs given."""
    customers: dict[str, int] = {}
    pairs = [(customers.setdefault(c, len(customers)), p) for c, p in kept]
    products = sorted({p for _, p in pairs})
    columns = {p: n for n, p in enumerate(products)}
    coded = KeptGoods(
        products,
        np.array([c for c, _ in pairs], dtype=np.intp),
        np.array([columns[p] for _, p in pairs], dtype=np.intp),
        list(customers),
    )
    return kept_similar_products(coded, neighbours)


def kept_similar_products(kept: KeptGoods, neighbours: int) -> dict[SimilarPair, Similar]:
    """Every product's `neighbours` most similar products (`nearest_neighbours`) from the
    buyers who kept some of the product: what the service stores."""
    customers = int(kept.buyers.max()) + 1 if len(kept.buyers) else 0
    bought = sparse.csr_matrix(
        (np.ones(len(kept.buyers)), (kept.buyers, kept.goods)),
        shape=(customers, len(kept.products)),
    )
    found = nearest_neighbours(bought, neighbours)
    co = found.co_buyers.tocoo()
    products = kept.products
    keys = zip(
        [products[row] for row in co.row.tolist()],
        [products[column] for column in co.col.tolist()],
        strict=True,
    )
    values = zip(
        co.data.astype(np.int64).tolist(), found.similarity.tocoo().data.tolist(), strict=True
    )
    return dict(zip(keys, values, strict=True))


def changed_similar_products(
    stored: Mapping[SimilarPair, Similar], computed: Mapping[SimilarPair, Similar]
) -> tuple[dict[SimilarPair, Similar], list[SimilarPair]]:
    """What to write so that the stored lists equal the computed ones: pairs new or changed, and
    pairs to delete."""
    upserts = {pair: value for pair, value in computed.items() if stored.get(pair) != value}
    deletes = sorted(pair for pair in stored if pair not in computed)
    return upserts, deletes
