"""Recommenders and their offline evaluation: metrics on hand-made rankings, each model on tiny
histories whose answer is known, and the evaluation command on a sample of the real file."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy import sparse

from crm_shared.contracts.events import build_event
from recommendation_service import evaluate, models
from recommendation_service.evaluation import (
    BLEND_WEIGHTS,
    blend,
    cache_parts,
    coverage,
    hit_rate_at_k,
    interactions,
    ndcg_at_k,
    novelty,
    scoring_parts,
    split,
    sweep,
    sweep_report,
    train,
    weightings,
)
from recommendation_service.evaluation import (
    evaluate as evaluate_model,
)
from recommendation_service.models import (
    EASE_BLOCK_ROWS,
    SEQUEL_GAP_DAYS,
    AlsParameters,
    Blend,
    EaseParameters,
    History,
    Interaction,
    _largest_per_row,
    best_per_row,
    changed_similar_products,
    fit_als,
    fit_ease,
    fit_item_knn,
    fit_popularity,
    fit_seasonal,
    fit_sequels,
    history,
    names,
    nearest_neighbours,
    scaled,
    sequel_counts,
    similar_products,
    top_k,
)
from tests.uci_data import real_file

T = datetime(2011, 9, 1, tzinfo=UTC)


def bought(customer: str, product: str, days_before: float, quantity: int = 1) -> Interaction:
    return Interaction(customer, product, quantity, T - timedelta(days=days_before))


def rows(*indices: int) -> np.ndarray:
    return np.array(indices, dtype=np.intp)


# --- metrics ---------------------------------------------------------------------------------


def test_ndcg_of_known_rankings() -> None:
    assert ndcg_at_k(["a", "b", "c"], {"a"}) == 1.0
    assert ndcg_at_k(["x", "a", "y"], {"a"}) == pytest.approx(1 / math.log2(3))
    # two relevant, found at ranks 1 and 3: (1 + 1/2) / (1 + 1/log2(3))
    assert ndcg_at_k(["a", "x", "b"], {"a", "b"}) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["x", "y"], {"a"}) == 0.0
    assert ndcg_at_k(["a"], set()) == 0.0


def test_ndcg_ideal_counts_at_most_k_relevant_products() -> None:
    relevant = {f"p{n}" for n in range(30)}
    assert ndcg_at_k([f"p{n}" for n in range(10)], relevant, k=10) == pytest.approx(1.0)
    assert ndcg_at_k(["p0", "p1"], relevant, k=2) == pytest.approx(1.0)


def test_hit_rate_looks_at_the_first_k_only() -> None:
    assert hit_rate_at_k(["x", "a"], {"a"}, k=2) == 1.0
    assert hit_rate_at_k(["x", "a"], {"a"}, k=1) == 0.0


def test_coverage_and_novelty() -> None:
    assert coverage([["a", "b"], ["b", "c"]], catalogue_size=6) == 0.5
    # "a" bought by half the customers (1 bit), "b" by an eighth (3 bits)
    assert novelty([["a", "b"], ["b"]], {"a": 0.5, "b": 0.125}) == pytest.approx((1 + 3 + 3) / 3)


# --- the history -------------------------------------------------------------------------------


def test_history_counts_what_was_kept_before_the_split_and_only_goods() -> None:
    past = history(
        [
            bought("C1", "MUG", 10, quantity=3),
            bought("C1", "MUG", 5, quantity=-3),  # all returned: no longer a buyer
            bought("C1", "TEA", 10, quantity=2),
            bought("C1", "TEA", 5, quantity=-1),  # some kept
            bought("C1", "POST", 10),
            bought("C2", "JAM", -1),  # after the split
            bought("C2", "MUG", 20),
        ],
        T,
    )
    assert past.customers == ("C1", "C2")
    assert past.products == ("MUG", "TEA")
    assert past.bought.toarray().tolist() == [[0, 1], [1, 0]]
    assert past.last_bought_age_days[0, 1] == pytest.approx(11.0)


def test_history_dates_each_product_s_first_and_last_purchase() -> None:
    found = [bought("C1", "MUG", 10), bought("C1", "MUG", 3), bought("C1", "MUG", 1, -1)]
    past = history(found, T, first_purchases=True)
    assert past.first_bought_age_days is not None
    assert past.first_bought_age_days[0, 0] == pytest.approx(11.0)
    assert past.last_bought_age_days[0, 0] == pytest.approx(4.0)  # a return is no purchase


def test_history_dates_first_purchases_only_when_asked_and_sequels_need_them() -> None:
    found = [bought("C1", "MUG", 10), bought("C1", "TEA", 3), bought("C2", "MUG", 2)]
    plain, dated = history(found, T), history(found, T, first_purchases=True)
    assert plain.first_bought_age_days is None
    assert (plain.bought != dated.bought).nnz == 0
    assert (plain.last_bought_age_days != dated.last_bought_age_days).nnz == 0
    with pytest.raises(ValueError, match="first_purchases=True"):
        fit_sequels(plain, 2, 90.0)


def test_interactions_read_orders_as_purchases_and_refunds_as_returns() -> None:
    line = {"product_id": "MUG", "unit_price": "1.00"}
    placed = build_event(
        "crm.order.placed.v1",
        "C1",
        {"order_id": "O1", "lines": [{**line, "quantity": 2}]},
        source="shop",
        time=T,
    )
    refunded = build_event(
        "crm.order.refunded.v1",
        "C1",
        {"refund_id": "R1", "lines": [{**line, "quantity": 1}]},
        source="shop",
        time=T,
    )
    viewed = build_event("crm.product.viewed.v1", "C1", {"product_id": "JAM"}, source="web")
    found = interactions([placed, refunded, viewed])
    assert [(i.customer_id, i.product_id, i.quantity) for i in found] == [
        ("C1", "MUG", 2),
        ("C1", "MUG", -1),
    ]


def test_split_keeps_goods_new_to_customers_who_have_a_past() -> None:
    data = split(
        [
            bought("C1", "MUG", 10),
            bought("C1", "MUG", -3),  # bought again: not new
            bought("C1", "TEA", -3),
            bought("C1", "POST", -3),  # not goods
            bought("C2", "JAM", -3),  # no past
            bought("C3", "JAM", 10),
        ],
        T,
    )
    assert data.relevant == {"C1": frozenset({"TEA"})}


def test_a_validation_window_ends_before_the_test_split() -> None:
    found = [
        bought("C1", "MUG", 10),
        bought("C1", "TEA", -3),
        bought("C1", "JAM", -30),  # on the day the window ends: the test split's
        bought("C2", "MUG", 10),
        bought("C2", "JAM", -40),  # only after the window
    ]
    data = split(found, T, until=T + timedelta(days=30))
    assert data.relevant == {"C1": frozenset({"TEA"})}


# --- the recommenders ------------------------------------------------------------------------


def test_cosine_neighbours_keep_the_most_similar_with_ties_by_product() -> None:
    # columns A, B, C; B shares one buyer with A and one with C
    bought_matrix = sparse.csr_matrix(
        np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1]], dtype=np.float64)
    )
    found = nearest_neighbours(bought_matrix, kept=1)
    assert found.similarity.toarray().tolist() == [[0, 0.5, 0], [0.5, 0, 0], [0, 0.5, 0]]
    assert found.co_buyers.toarray().tolist() == [[0, 1, 0], [1, 0, 0], [0, 1, 0]]
    everything = nearest_neighbours(bought_matrix, kept=5)  # A and C share nobody: not listed
    assert everything.similarity.nnz == 4


def test_similar_products_are_what_the_service_stores_and_only_changes_are_written() -> None:
    kept = [
        ("C1", "JAM"),
        ("C1", "TEA"),
        ("C2", "JAM"),
        ("C2", "TEA"),
        ("C3", "JAM"),
        ("C3", "MUG"),
    ]
    found = similar_products(kept, neighbours=1)
    assert found == {
        ("JAM", "TEA"): (2, 2 / math.sqrt(3 * 2)),
        ("TEA", "JAM"): (2, 2 / math.sqrt(2 * 3)),
        ("MUG", "JAM"): (1, 1 / math.sqrt(1 * 3)),
    }
    assert similar_products(reversed(kept), neighbours=1) == found  # order-free
    stored = {
        ("JAM", "TEA"): (1, 0.5),
        ("JAM", "MUG"): (1, 0.5),
        ("MUG", "JAM"): found["MUG", "JAM"],
    }
    upserts, deletes = changed_similar_products(stored, found)
    assert upserts == {key: found[key] for key in [("JAM", "TEA"), ("TEA", "JAM")]}
    assert deletes == [("JAM", "MUG")]


def test_top_k_leaves_out_what_was_bought_and_what_has_no_score() -> None:
    scores = np.array([[0.9, 0.5, 0.5, 0.0, 0.7]], dtype=np.float32)
    already = sparse.csr_matrix(np.array([[1, 0, 0, 0, 0]]))
    assert top_k(scores, already, 10)[0].tolist() == [4, 1, 2]


def test_decayed_popularity_prefers_recent_buyers() -> None:
    past = history([bought("C1", "OLD", 60), bought("C2", "OLD", 60), bought("C3", "NEW", 1)], T)
    plain = fit_popularity(past, math.inf, "popularity").scores(rows(0))[0]
    assert plain[past.products.index("OLD")] > plain[past.products.index("NEW")]
    trending = fit_popularity(past, 10.0, "trending").scores(rows(0))[0]
    assert trending[past.products.index("NEW")] > trending[past.products.index("OLD")]


def test_seasonal_counts_buyers_of_the_coming_weeks_a_year_ago() -> None:
    found = [
        bought("C1", "XMAS", 365 - 80),
        bought("C2", "XMAS", 365 - 90),
        bought("C1", "SUN", 365 + 30),  # before the season
        bought("C3", "SUN", 200),  # after it
    ]
    past = history(found, T)
    votes = dict(zip(past.products, fit_seasonal(past, found).votes.tolist(), strict=True))
    assert votes == {"SUN": 0.0, "XMAS": 2.0}


def test_item_knn_sums_the_similarity_to_what_the_customer_bought() -> None:
    found = [
        bought("C1", "JAM", 5),
        bought("C1", "TEA", 5),
        bought("C2", "JAM", 5),
        bought("C2", "TEA", 5),
        bought("C3", "JAM", 5),
        bought("C3", "MUG", 5),
        bought("C4", "JAM", 5),  # the customer
    ]
    past = history(found, T)
    knn = fit_item_knn(past, neighbours=10, half_life_days=math.inf)
    ranked = top_k(knn.scores(rows(3)), past.bought[[3]], 10)[0].tolist()
    assert names(past, ranked) == ["TEA", "MUG"]


def _two_tastes() -> list[Interaction]:
    """Ten customers like tea things, ten like garden things; T9 has not bought TEAPOT yet."""
    found = []
    for n in range(10):
        found += [
            bought(f"T{n}", p, 3) for p in ("TEA", "CUP", "TEAPOT") if (n, p) != (9, "TEAPOT")
        ]
        found += [bought(f"G{n}", p, 3) for p in ("SPADE", "SEEDS", "HOSE")]
    return found


def test_als_recommends_what_customers_of_the_same_taste_bought() -> None:
    past = history(_two_tastes(), T)
    als = fit_als(past, AlsParameters(factors=4, iterations=20))
    customer = past.customers.index("T9")
    ranked = top_k(als.scores(rows(customer)), past.bought[[customer]], 1)[0].tolist()
    assert names(past, ranked) == ["TEAPOT"]


def test_ease_recommends_what_customers_of_the_same_taste_bought() -> None:
    past = history(_two_tastes(), T)
    ease = fit_ease(past, EaseParameters(regularization=1.0))
    customer = past.customers.index("T9")
    ranked = top_k(ease.scores(rows(customer)), past.bought[[customer]], 10)[0].tolist()
    assert names(past, ranked) == ["TEAPOT"]


def test_ease_learns_weights_among_the_most_bought_goods_only() -> None:
    found = [
        *(bought(f"C{n}", "JAM", 5) for n in range(4)),
        *(bought(f"C{n}", "TEA", 5) for n in range(3)),
        *(bought(f"C{n}", "MUG", 5) for n in range(2)),
        bought("C9", "JAM", 5),
    ]
    past = history(found, T)
    capped = fit_ease(past, EaseParameters(regularization=1.0, max_products=2)).similar.toarray()
    mug = past.products.index("MUG")
    assert not capped[mug].any() and not capped[:, mug].any()
    assert capped[past.products.index("JAM"), past.products.index("TEA")] > 0
    whole = fit_ease(past, EaseParameters(regularization=1.0)).similar
    assert whole.diagonal().tolist() == [0.0, 0.0, 0.0]
    assert whole[past.products.index("JAM"), mug] > 0
    assert (
        fit_ease(past, EaseParameters(regularization=1.0, kept=1)).similar.getnnz(axis=1).max() == 1
    )


def _sequel_history() -> History:
    return history(
        [
            bought("C1", "JAM", 30),
            bought("C1", "TEA", 20),
            bought("C1", "MUG", 20),  # in the same order as TEA: neither follows the other
            bought("C1", "JAM", 5),  # bought again: its first purchase sets the order
            bought("C2", "JAM", 30),
            bought("C2", "TEA", 10),
            bought("C3", "TEA", 30),
            bought("C3", "JAM", 10),
            bought("C3", "CUP", 40),
            bought("C3", "CUP", 35, quantity=-1),  # returned: C3 is no buyer of CUP
        ],
        T,
        first_purchases=True,
    )


def test_sequels_count_the_customers_who_went_on_to_buy_in_a_later_order() -> None:
    past = _sequel_history()
    at = past.products.index
    counts = sequel_counts(past).toarray()
    assert "CUP" not in past.products
    assert counts[at("JAM"), at("TEA")] == 2  # C1 and C2
    assert counts[at("TEA"), at("JAM")] == 1  # C3
    assert counts[at("JAM"), at("MUG")] == 1
    assert counts[at("TEA"), at("MUG")] == counts[at("MUG"), at("TEA")] == 0
    assert counts.diagonal().tolist() == [0.0] * len(past.products)


def _reference_sequel_counts(past: History) -> np.ndarray:
    """sequel_counts the plain way: every ordered pair of each customer's products."""
    counts = np.zeros((len(past.products), len(past.products)))
    ages = past.first_bought_age_days
    assert ages is not None
    for customer in range(ages.shape[0]):
        start, end = ages.indptr[customer], ages.indptr[customer + 1]
        kept = list(zip(ages.indices[start:end], ages.data[start:end], strict=True))
        for earlier, earlier_age in kept:
            for later, later_age in kept:
                if earlier_age - later_age > SEQUEL_GAP_DAYS:
                    counts[earlier, later] += 1
    return counts


def _random_history(seed: int) -> History:
    """Purchases and returns on quarter days (so that gaps of exactly SEQUEL_GAP_DAYS occur) and
    at any time, some customers with many goods, some with one."""
    rng = np.random.default_rng(seed)
    found = []
    for customer in range(40):
        for _ in range(int(rng.integers(1, 40))):
            product = f"P{int(rng.integers(0, 25)):02d}"
            days = rng.integers(0, 80) / 4 if rng.random() < 0.5 else rng.uniform(0, 20)
            quantity = -1 if rng.random() < 0.1 else int(rng.integers(1, 4))
            found.append(bought(f"C{customer:02d}", product, float(days), quantity))
    return history(found, T, first_purchases=True)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("pairs_block", [models.SEQUEL_PAIRS_BLOCK, 7])
def test_sequel_counts_equal_every_ordered_pair_counted_one_by_one(
    seed: int, pairs_block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "SEQUEL_PAIRS_BLOCK", pairs_block)
    past = _random_history(seed)
    expected = _reference_sequel_counts(past)
    assert expected.sum() > 100  # enough pairs to compare, and blocks to split them into
    counts = sequel_counts(past)
    assert counts.dtype == np.float32
    assert np.array_equal(counts.toarray(), expected)


def test_sequel_weights_are_scaled_by_both_buyer_counts_and_kept_per_product() -> None:
    past = _sequel_history()
    at = past.products.index
    weights = fit_sequels(past, 2, 90.0).similar
    assert weights[at("JAM"), at("TEA")] == pytest.approx(2 / 3)  # 2 of 3 buyers each
    assert weights[at("JAM"), at("MUG")] == pytest.approx(1 / np.sqrt(3))
    strongest = fit_sequels(past, 1, 90.0)
    assert strongest.similar[at("JAM")].nonzero()[1].tolist() == [at("TEA")]
    customer = past.customers.index("C2")  # JAM, then TEA: MUG is what JAM's buyers went on to
    ranked = top_k(strongest.scores(rows(customer)), past.bought[[customer]], 10)[0].tolist()
    assert names(past, ranked) == []  # TEA is kept; MUG fell to the kept limit
    ranked = top_k(fit_sequels(past, 2, 90.0).scores(rows(customer)), past.bought[[customer]], 10)
    assert names(past, ranked[0].tolist()) == ["MUG"]


def test_blend_scales_each_model_per_customer_before_weighing() -> None:
    assert scaled(np.array([[2.0, 1.0, -1.0], [0.0, 0.0, 0.0]], dtype=np.float32)).tolist() == [
        [1.0, 0.5, 0.0],
        [0.0, 0.0, 0.0],
    ]
    past = history(_two_tastes(), T)
    big = fit_popularity(past, math.inf, "big")  # votes in the tens
    small = fit_item_knn(past, neighbours=10, half_life_days=math.inf)  # cosines below 1
    blend = Blend(((big, 1.0), (small, 3.0)))
    customer = past.customers.index("T9")
    expected = scaled(big.scores(rows(customer))) + 3 * scaled(small.scores(rows(customer)))
    assert blend.scores(rows(customer)) == pytest.approx(expected)


# --- the command on the real file ---------------------------------------------------------------


@real_file
def test_evaluation_of_a_sample_ranks_the_blend_above_every_single_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert evaluate.main(["--sample", "600"]) == 0
    table = capsys.readouterr().out.splitlines()
    rows_by_name = {
        cells[1].strip(): [float(c.strip().rstrip("%")) for c in cells[2:-1]]
        for line in table
        if line.startswith("| ") and not line.startswith("| recommender")
        for cells in [line.split("|")]
    }
    assert list(rows_by_name) == [
        "popularity",
        "trending",
        "seasonal",
        "item-knn",
        "als",
        "ease",
        "sequel",
        "blend",
    ]
    ndcg = {name: figures[1] for name, figures in rows_by_name.items()}
    assert ndcg["popularity"] > 0
    assert ndcg["item-knn"] > 1.5 * ndcg["popularity"]
    assert ndcg["als"] > 1.5 * ndcg["popularity"]
    assert ndcg["ease"] > 1.5 * ndcg["popularity"]
    assert ndcg["sequel"] > ndcg["popularity"]
    singles = ("item-knn", "als", "seasonal", "ease", "sequel")
    assert ndcg["blend"] > max(ndcg[name] for name in singles)


def test_ease_weights_ranked_a_block_of_rows_at_a_time_equal_the_whole_ranking() -> None:
    """The blocks exist to bound the training's memory; they must not change what is kept."""
    weights = np.random.default_rng(3).normal(size=(EASE_BLOCK_ROWS + 45, 300))
    weights[7] = 0.0  # a product with no weights keeps none
    expected = best_per_row(np.abs(weights), 10)
    rows, columns = _largest_per_row(weights, 10)
    assert np.array_equal(rows, expected[0]) and np.array_equal(columns, expected[1])
    assert 7 not in rows and len(rows) == 10 * (len(weights) - 1)


# --- choosing the blend's weights: a sweep over parts scored once -----------------------------


def _shop() -> list[Interaction]:
    """Forty customers who buy among twelve goods at random, before and after T."""
    rng = np.random.default_rng(11)
    return [
        bought(f"C{customer}", f"P{product}", float(days))
        for customer in range(40)
        for product, days in zip(
            rng.choice(12, size=6, replace=False), rng.integers(-60, 200, size=6), strict=True
        )
    ]


def test_weightings_keep_the_first_part_at_one_and_try_every_value_for_the_others() -> None:
    grid = weightings(["ease", "als", "item-knn"], (0.0, 0.5))
    assert grid == [
        {"ease": 1.0, "als": 0.0, "item-knn": 0.0},
        {"ease": 1.0, "als": 0.0, "item-knn": 0.5},
        {"ease": 1.0, "als": 0.5, "item-knn": 0.0},
        {"ease": 1.0, "als": 0.5, "item-knn": 0.5},
    ]


def test_a_sweep_gives_the_figures_of_each_blend_of_the_fitted_parts() -> None:
    found = _shop()
    data = split(found, T)
    models = train(found, data, AlsParameters(factors=4, iterations=5), EaseParameters(1.0))
    fitted = {model.name: model for model in models}
    parts = cache_parts(fitted, data)
    # the history is shorter than a year: the seasonal part scores nothing and is not swept
    assert scoring_parts(parts) == ["ease", "als", "item-knn", "sequel"]
    grid = weightings(scoring_parts(parts), (0.0, 0.3, 1.0))
    done: list[int] = []
    found_figures = sweep(parts, data, grid, done.append)
    assert done == list(range(1, len(grid) + 1))
    for weights, figures in found_figures:
        assert figures == evaluate_model(blend(fitted, weights), data)
    assert len({figures.ndcg for _, figures in found_figures}) > 1  # the weights matter here
    served = {name: BLEND_WEIGHTS[name] for name in scoring_parts(parts)}
    assert sweep(parts, data, [served])[0][1] == evaluate_model(models[-1], data)


def test_the_sweep_report_ranks_the_best_ndcg_first_and_marks_the_served_weights() -> None:
    found = _shop()
    data = split(found, T)
    models = train(found, data, AlsParameters(factors=4, iterations=5), EaseParameters(1.0))
    parts = cache_parts({model.name: model for model in models}, data)
    served = {name: BLEND_WEIGHTS[name] for name in ("ease", "als", "item-knn")}
    other = {"ease": 1.0, "als": 0.0, "item-knn": 0.0}
    found_figures = sweep(parts, data, [other, served])
    lines = sweep_report(found_figures, evaluate_model(models[0], data)).splitlines()
    ndcg = [float(line.split("|")[6]) for line in lines[2:]]
    assert ndcg == sorted(ndcg, reverse=True) and len(ndcg) == 2
    (marked,) = [line for line in lines[2:] if "(served)" in line]
    assert marked.split("|")[1:6] == [f" {served[n]:g} " for n in served] + [" - ", " - "]


@real_file
def test_the_command_changes_model_parameters_and_refuses_unknown_ones() -> None:
    args = evaluate.parse_args(
        ["--ease", "regularization=50", "--ease", "kept=20", "--als", "factors=8"]
    )
    assert args.ease == EaseParameters(regularization=50.0, kept=20)
    assert args.als == AlsParameters(factors=8)
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--ease", "lambda=50"])
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--split", "2011-09-01", "--until", "2011-08-01"])


@real_file
def test_the_sweep_of_a_sample_on_a_validation_window(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--sample", "400", "--split", "2011-07-01", "--until", "2011-09-01", "--sweep"]
    assert evaluate.main(argv) == 0
    out = capsys.readouterr().out
    assert "until 2011-09-01" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1 |")]
    # no season a year before 2011-07-01 in the file: the seasonal weight is not swept
    assert len(rows) == len(weightings(["ease", "als", "item-knn", "sequel"]))
    assert all(line.split("|")[4].strip() == "-" for line in rows)
