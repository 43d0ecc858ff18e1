"""RFM scoring and naming, top customers' Pareto curve and the cube's dimensions: pure rules."""

from __future__ import annotations

from decimal import Decimal

import pytest

from profile_service.analytics import (
    RFM_SEGMENTS,
    Measures,
    UnknownDimension,
    cube_dimensions,
    pareto_curve,
    percent_ranks,
    quintile_score,
    rfm_scores,
    rfm_segment,
    segment_table,
)


def test_quintile_scores_split_the_percent_ranks_in_fifths() -> None:
    assert [quintile_score(p) for p in (0, 0.19, 0.2, 0.45, 0.6, 0.79, 0.8, 1.0)] == [
        1, 1, 2, 3, 4, 4, 5, 5,
    ]  # fmt: skip


def test_ties_share_the_lowest_percent_rank_as_in_postgresql() -> None:
    assert percent_ranks([5, 1, 1, 3, 9]) == [0.75, 0.0, 0.0, 0.5, 1.0]
    assert percent_ranks([7]) == [0.0]


def test_recent_frequent_big_spenders_score_five_and_the_opposite_one() -> None:
    population = {
        f"C{i}": Measures(Decimal(100 - 10 * i), i, Decimal(i * 20)) for i in range(1, 11)
    }
    scores = rfm_scores(population)
    assert scores["C10"] == (5, 5, 5)
    assert scores["C1"] == (1, 1, 1)
    assert sorted(r for r, _, _ in scores.values()) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


@pytest.mark.parametrize(
    ("scores", "segment"),
    [
        ((5, 5, 5), "champions"),
        ((5, 4, 3), "champions"),
        ((4, 5, 4), "loyal"),
        ((3, 4, 4), "loyal"),
        ((5, 2, 3), "potential loyalists"),
        ((5, 1, 1), "new"),
        ((4, 1, 1), "promising"),
        ((3, 3, 3), "need attention"),
        ((3, 1, 2), "about to sleep"),
        ((2, 3, 4), "at risk"),
        ((1, 5, 5), "cannot lose them"),
        ((2, 1, 2), "hibernating"),
        ((1, 1, 1), "lost"),
    ],
)
def test_named_segments_follow_the_documented_grid(
    scores: tuple[int, int, int], segment: str
) -> None:
    assert rfm_segment(*scores) == segment


def test_every_score_combination_has_one_of_the_eleven_segments_and_each_is_reached() -> None:
    table = segment_table()
    assert len(table) == 125
    assert {segment for *_, segment in table} == set(RFM_SEGMENTS)


def test_a_score_outside_one_to_five_is_refused() -> None:
    with pytest.raises(ValueError, match="scores must be 1-5"):
        rfm_segment(0, 3, 3)


def test_the_pareto_curve_reaches_all_revenue_past_the_paying_customers() -> None:
    curve = pareto_curve(
        active=4,
        revenue=Decimal(100),
        running_at={1: Decimal(60), 2: Decimal(90), 3: Decimal(100)},
        points=4,
    )
    assert [(p.population_share, p.revenue_share) for p in curve] == [
        (Decimal("0.25"), Decimal("0.6")),
        (Decimal("0.5"), Decimal("0.9")),
        (Decimal("0.75"), Decimal("1")),
        (Decimal("1"), Decimal("1")),
    ]
    assert pareto_curve(0, Decimal(0), {}, 10) == []


def test_cube_dimensions_are_checked_and_kept_once_in_order() -> None:
    assert cube_dimensions(["month", "segment", "month"]) == ("month", "segment")
    with pytest.raises(UnknownDimension, match=r"'colour'.*choose among segment"):
        cube_dimensions(["segment", "colour"])
