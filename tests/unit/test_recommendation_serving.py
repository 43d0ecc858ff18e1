"""The served model's pure parts: training on what customers kept, each customer's picks from a
version and the live neighbours, their reasons, and when to train."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy import sparse

from recommendation_service.models import AlsParameters, EaseParameters
from recommendation_service.serving import (
    MIN_PICK_SCORE,
    Kept,
    Neighbour,
    ServingModel,
    model_from_rows,
    outdated,
    personal_picks,
    pick_document,
    strongest_seeds,
    train,
    training_due,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SMALL = AlsParameters(factors=4, iterations=3)
EASE = EaseParameters(regularization=1.0)


def _kept(customer: str, *products: str, day: int = 0) -> list[Kept]:
    when = T0 + timedelta(days=day)
    return [Kept(customer, product, when, when) for product in products]


def _both_ways(product: str, other: str, similarity: float) -> list[Neighbour]:
    return [Neighbour(product, other, similarity), Neighbour(other, product, similarity)]


def _model(
    products: tuple[str, ...],
    seasonal: list[float] | None = None,
    ease: dict[tuple[str, str], float] | None = None,
    sequels: dict[tuple[str, str], float] | None = None,
) -> ServingModel:
    """A version whose ALS knows nothing (zero factors): item-kNN, the season vote, the EASE
    and the sequel weights given (none by default)."""
    index = {product: n for n, product in enumerate(products)}

    def matrix(weights: dict[tuple[str, str], float]) -> sparse.csr_matrix:
        return sparse.csr_matrix(
            (
                np.array(list(weights.values()), dtype=np.float32),
                ([index[a] for a, _ in weights], [index[b] for _, b in weights]),
            ),
            shape=(len(products), len(products)),
        )

    return ServingModel(
        products,
        np.zeros((len(products), SMALL.factors), dtype=np.float32),
        np.array(seasonal or [0.0] * len(products), dtype=np.float32),
        matrix(ease or {}),
        matrix(sequels or {}),
        SMALL,
        EASE,
        T0 + timedelta(days=30),
    )


def test_training_learns_the_goods_kept_and_dates_the_version_after_the_newest_purchase() -> None:
    kept = [*_kept("C1", "JAM", "TEA"), *_kept("C2", "JAM", "MUG", day=3), *_kept("C3", "POST")]
    model = train(kept, SMALL, EASE)
    assert model.products == ("JAM", "MUG", "TEA")  # POST is not goods
    assert model.product_factors.shape == (3, SMALL.factors)
    assert model.ease.shape == (3, 3) and model.ease.diagonal().tolist() == [0, 0, 0]
    assert model.ease[0, 2] > 0  # JAM -> TEA: bought together by C1
    assert model.data_as_of == T0 + timedelta(days=3, seconds=1)
    assert np.isfinite(model.product_factors).all()
    with pytest.raises(ValueError, match="nothing to train on"):
        train([], SMALL, EASE)


def test_a_stored_version_reads_back_as_it_was_trained() -> None:
    kept = [*_kept("C1", "JAM", "TEA"), *_kept("C2", "JAM"), *_kept("C2", "MUG", day=3)]
    model = train(kept, SMALL, EASE)
    assert model.sequels[0, 1] > 0 and model.sequels[1, 0] == 0  # C2: JAM, then MUG
    rows = [
        (product, model.product_factors[n].tolist(), float(model.seasonal[n]))
        for n, product in reversed(list(enumerate(model.products)))
    ]
    weights = {
        part: [
            (model.products[a], model.products[b], float(w))
            for a, b, w in zip(found.row, found.col, found.data, strict=True)
        ]
        for part, matrix in model.item_weights().items()
        for found in [matrix.tocoo()]
    }
    assert weights["ease"] and weights["sequel"]
    again = model_from_rows(rows, weights, model.described(), model.data_as_of)
    assert again.products == model.products
    assert np.array_equal(again.product_factors, model.product_factors)
    assert np.array_equal(again.ease.toarray(), model.ease.toarray())
    assert np.array_equal(again.sequels.toarray(), model.sequels.toarray())
    assert again.parameters == SMALL and again.ease_parameters == EASE


def test_picks_leave_out_what_was_bought_and_name_the_product_that_voted_most() -> None:
    model = _model(("CUP", "JAM", "MUG", "TEA"))
    neighbours = [
        *_both_ways("JAM", "TEA", 0.9),
        *_both_ways("JAM", "MUG", 0.4),
        *_both_ways("CUP", "MUG", 0.8),
        *_both_ways("JAM", "CUP", 0.1),
    ]
    picks = personal_picks(model, ["ME"], _kept("ME", "JAM", "CUP"), neighbours)
    assert [pick.product_id for pick in picks["ME"]] == ["MUG", "TEA"]
    mug, tea = picks["ME"]
    assert (mug.reason.kind, mug.reason.product_id) == ("bought-together", "CUP")
    assert (tea.reason.kind, tea.reason.product_id) == ("bought-together", "JAM")
    assert pick_document(tea, "Tea")["reason"]["text"] == "bought together with JAM"


def test_a_pick_owed_to_the_sequels_names_the_product_it_follows() -> None:
    model = _model(("JAM", "MUG", "TEA"), sequels={("JAM", "TEA"): 0.9, ("TEA", "JAM"): 0.0})
    picks = personal_picks(model, ["ME"], _kept("ME", "JAM"), [])
    assert [pick.product_id for pick in picks["ME"]] == ["TEA"]
    (tea,) = picks["ME"]
    assert (tea.reason.kind, tea.reason.product_id) == ("bought-after", "JAM")
    assert pick_document(tea, "Tea")["reason"]["text"] == "often bought after JAM"


def test_a_product_scoring_only_rounding_noise_is_no_pick() -> None:
    """A neighbour whose similarity is noise next to the best one's does not make a pick: the
    reader offers popular goods rather than a reason that is not one."""
    neighbours = [*_both_ways("JAM", "TEA", 0.9), *_both_ways("JAM", "MUG", 1e-7)]
    picks = personal_picks(_model(("JAM", "MUG", "TEA")), ["ME"], _kept("ME", "JAM"), neighbours)
    assert [pick.product_id for pick in picks["ME"]] == ["TEA"]
    assert picks["ME"][0].score >= MIN_PICK_SCORE


def test_a_product_the_version_never_saw_is_offered_through_its_live_neighbours() -> None:
    picks = personal_picks(
        _model(("JAM",)), ["ME"], _kept("ME", "JAM"), _both_ways("JAM", "NEW", 0.5)
    )
    assert [(p.product_id, p.reason.product_id) for p in picks["ME"]] == [("NEW", "JAM")]


def test_the_season_vote_explains_picks_no_purchase_points_to() -> None:
    model = _model(("JAM", "TREE"), seasonal=[0.0, 5.0])
    picks = personal_picks(model, ["ME", "NOBODY"], _kept("ME", "JAM"), [])
    assert [(p.product_id, p.reason.kind) for p in picks["ME"]] == [("TREE", "seasonal")]
    assert "NOBODY" not in picks  # kept nothing: the reader falls back to popular goods


def test_picks_are_the_same_whatever_the_customers_computed_with_them() -> None:
    baskets = (("JAM", "TEA"), ("TEA", "MUG"), ("JAM", "MUG", "TEA"))
    model = train([item for n in range(9) for item in _kept(f"C{n}", *baskets[n % 3])], SMALL, EASE)
    kept = [item for n in range(600) for item in _kept(f"X{n}", ("JAM", "TEA", "MUG")[n % 3])]
    neighbours = [*_both_ways("JAM", "TEA", 0.7), *_both_ways("TEA", "MUG", 0.3)]
    everyone = personal_picks(model, [f"X{n}" for n in range(600)], kept, neighbours)
    alone = personal_picks(model, ["X599"], kept, neighbours)
    assert alone["X599"] == everyone["X599"]


def test_an_ease_pick_is_bought_together_with_the_customers_product_that_weighs_most() -> None:
    """No neighbours, no season: the EASE weights alone pick, and the reason names the product
    of the customer's with the largest weight towards the pick; a negative weight never picks."""
    model = _model(
        ("CUP", "JAM", "MUG", "TEA", "TRAY"),
        ease={("JAM", "TEA"): 0.2, ("CUP", "TEA"): 0.5, ("JAM", "MUG"): 0.3, ("CUP", "TRAY"): -1.0},
    )
    picks = personal_picks(model, ["ME"], _kept("ME", "JAM", "CUP"), [])
    assert [(p.product_id, p.reason.kind, p.reason.product_id) for p in picks["ME"]] == [
        ("TEA", "bought-together", "CUP"),
        ("MUG", "bought-together", "JAM"),
    ]


def test_a_version_trained_for_the_blend_served_before_reads_back_and_is_outdated() -> None:
    model = train([*_kept("C1", "JAM", "TEA"), *_kept("C2", "JAM", "MUG")], SMALL, EASE)
    rows = [
        (product, model.product_factors[n].tolist(), float(model.seasonal[n]))
        for n, product in enumerate(model.products)
    ]
    before = {
        "als": model.described()["als"],
        "blend_weights": {"item-knn": 1.0, "als": 1.0, "seasonal": 1.0},
    }
    old = model_from_rows(rows, {}, before, model.data_as_of)
    assert old.ease.nnz == old.sequels.nnz == 0 and personal_picks(
        old, ["ME"], _kept("ME", "JAM"), []
    )
    assert outdated(before) and not outdated(model.described())


def test_training_is_due_on_request_without_a_version_or_when_the_version_is_old() -> None:
    now = T0 + timedelta(hours=2)
    assert training_due(None, False, now, 3600)
    assert training_due(now, True, now, 3600)
    assert not training_due(now - timedelta(minutes=59), False, now, 3600)
    assert training_due(now - timedelta(hours=1), False, now, 3600)


def test_the_strongest_seed_of_each_pick_is_the_row_product_with_the_largest_weighted_vote() -> (
    None
):
    """Against a dense reading of the definition: rows of several sizes (none, one, many),
    negative and zero votes (-1), and ties (the row's first product in column order)."""
    rng = np.random.default_rng(5)
    width = 12
    similar = sparse.random(width, width, density=0.4, random_state=rng, format="csr")
    similar.data = np.round(similar.data * 4 - 1)  # small integers: ties and negative votes
    seeds = sparse.random(7, width, density=0.35, random_state=rng, format="csr")
    seeds.data = np.round(seeds.data * 2 + 0.5)
    seeds[3] = 0
    seeds.eliminate_zeros()
    chosen = [rng.choice(width, size=rng.integers(0, 6), replace=False) for _ in range(7)]
    found = strongest_seeds(seeds, similar, chosen)
    dense_seeds, dense_similar = seeds.toarray(), similar.toarray()
    for row, columns in enumerate(chosen):
        owned = np.flatnonzero(dense_seeds[row])
        expected = []
        for column in columns:
            votes = dense_seeds[row, owned] * dense_similar[owned, column]
            best = int(np.argmax(votes)) if len(owned) else 0
            expected.append(int(owned[best]) if len(owned) and votes[best] > 0 else -1)
        assert found[row].tolist() == expected
    assert any(-1 in row.tolist() for row in found) and any((row >= 0).any() for row in found)
