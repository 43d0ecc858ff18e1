"""Voice of the customer, pure: feedback versions, detractors, NPS/CSAT/effort figures, trends,
dimensions and the satisfaction after a moment of truth."""

from __future__ import annotations

import json
from typing import Any

import pytest

from crm_shared.contracts.events import (
    DETRACTOR_SCORED,
    Event,
    InvalidEvent,
    Measure,
    RatedItem,
    RatedKind,
)
from interaction_service.experience import (
    ScoreCounts,
    count_scores,
    detractor_events,
    dimension_summary,
    figures,
    is_detractor,
    net_promoter_score,
    rating_of,
    ratings,
    satisfaction_after,
    trend,
)
from interaction_service.projection import summary_deltas, timeline_entry
from tests.unit.events_factory import at, event, order


def _scored(customer: str, measure: str, score: int, minutes: float = 0, **more: Any) -> Event:
    return event(
        "crm.feedback.given.v2",
        customer,
        {"measure": measure, "score": score, **more},
        minutes=minutes,
    )


def test_a_version_1_feedback_reads_as_a_csat_score_of_its_channel() -> None:
    old = event(
        "crm.feedback.given.v1", "C-1", {"score": 2, "kind": "complaint", "channel": "phone"}
    )
    rating = rating_of(old)
    assert (rating.measure, rating.score, rating.touchpoint, rating.kind) == (
        Measure.CSAT,
        2,
        "phone",
        "complaint",
    )


def test_a_score_outside_its_measures_scale_is_refused_with_the_reason() -> None:
    with pytest.raises(InvalidEvent, match="a csat score is from 1 to 5, not 9"):
        _scored("C-1", "csat", 9)
    with pytest.raises(InvalidEvent, match="a ces score is from 1 to 7, not 0"):
        _scored("C-1", "ces", 0)
    with pytest.raises(InvalidEvent, match="dimensions"):
        _scored("C-1", "nps", 9, dimensions={"speed": 3})


def test_detractors_are_nps_0_to_6_csat_1_to_2_and_effort_1_to_2() -> None:
    assert [s for s in range(11) if is_detractor(Measure.NPS, s)] == list(range(7))
    assert [s for s in range(1, 6) if is_detractor(Measure.CSAT, s)] == [1, 2]
    assert [s for s in range(1, 8) if is_detractor(Measure.CES, s)] == [1, 2]


def test_a_detractor_score_derives_one_event_whose_id_repeats_with_its_cause() -> None:
    low = _scored("C-1", "nps", 3, touchpoint="checkout", about={"kind": "order", "id": "O-1"})
    high = _scored("C-1", "nps", 9)
    first = detractor_events([low, high])
    again = detractor_events([low])
    assert len(first) == 1 and first[0].type == DETRACTOR_SCORED
    assert first[0].event_id == again[0].event_id
    document = json.loads(first[0].value)
    assert document["subject"] == "C-1"
    assert document["data"]["touchpoint"] == "checkout"
    assert document["data"]["about"] == {"kind": "order", "id": "O-1"}
    assert document["data"]["feedback_id"] == low.id


def test_nps_is_percent_promoters_minus_percent_detractors() -> None:
    counts = count_scores([(Measure.NPS, s) for s in (10, 9, 9, 8, 7, 6, 0)])
    result = figures(counts)
    assert (result.promoters, result.passives, result.detractors) == (3, 2, 2)
    assert result.nps == round(100 * (3 - 2) / 7, 1) == 14.3
    assert net_promoter_score(0, 0, 0) is None
    assert net_promoter_score(0, 4, 4) == -100.0


def test_csat_and_effort_are_means_of_their_own_scores_only() -> None:
    counts = count_scores(
        [(Measure.CSAT, 5), (Measure.CSAT, 4), (Measure.CES, 6), (Measure.NPS, 10)]
    )
    result = figures(counts)
    assert (result.csat, result.csat_responses) == (4.5, 2)
    assert (result.effort, result.effort_responses) == (6.0, 1)
    assert result.responses == 4
    assert figures(ScoreCounts()).csat is None


def test_trend_points_are_ordered_by_group_then_period() -> None:
    march, april = at(0), at(60 * 24 * 31)
    rows = [
        ("store", april, ScoreCounts(nps_responses=1, promoters=1)),
        ("checkout", april, ScoreCounts(nps_responses=2, nps_detractors=1)),
        ("checkout", march, ScoreCounts(csat_responses=1, csat_sum=4)),
    ]
    points = trend(rows)
    assert [(p.group, p.period_start) for p in points] == [
        ("checkout", march),
        ("checkout", april),
        ("store", april),
    ]
    assert points[1].figures.nps == -50.0 and points[2].figures.nps == 100.0


def test_dimensions_are_averaged_per_touchpoint_and_per_facet() -> None:
    summary = dimension_summary(
        [
            ("store", "reliability", 2, 9),
            ("store", "convenience", 1, 3),
            ("store", "integrity", 2, 10),
            ("web", "efficiency", 1, 2),
        ]
    )
    store = summary[0]
    assert store.touchpoint == "store"
    assert [(d.dimension, d.facet, d.mean) for d in store.dimensions] == [
        ("convenience", "functional", 3.0),
        ("integrity", "emotional", 5.0),
        ("reliability", "functional", 4.5),
    ]
    assert [(f.facet, f.ratings, f.mean) for f in store.facets] == [
        ("emotional", 2, 5.0),
        ("functional", 3, 4.0),
    ]
    assert summary[1].touchpoint == "web"


def test_the_satisfaction_after_a_moment_is_the_linked_rating_else_the_next_in_the_window() -> None:
    moment = at(0)
    unlinked_soon = rating_of(_scored("C-1", "csat", 3, minutes=60))
    linked_late = rating_of(
        _scored("C-1", "csat", 5, minutes=60 * 24 * 20, about={"kind": "order", "id": "O-1"})
    )
    before = rating_of(_scored("C-1", "csat", 1, minutes=-5))
    order_one = RatedItem(kind=RatedKind.ORDER, id="O-1")
    other = RatedItem(kind=RatedKind.ORDER, id="O-2")
    assert (
        satisfaction_after(moment, order_one, [unlinked_soon, linked_late, before]) == linked_late
    )
    assert satisfaction_after(moment, other, [before, unlinked_soon]) == unlinked_soon
    too_late = rating_of(_scored("C-1", "csat", 4, minutes=8 * 24 * 60))
    assert satisfaction_after(moment, other, [too_late]) is None


def test_only_csat_scores_count_in_the_contact_summarys_average_satisfaction() -> None:
    events = [
        _scored("C-1", "nps", 10),
        _scored("C-1", "csat", 4, kind="complaint"),
        _scored("C-1", "ces", 7),
        order("C-1", "O-1", ("P", 1, "1.00")),
    ]
    totals = summary_deltas(events)["C-1"]
    assert (totals.feedback, totals.feedback_score_sum, totals.complaints) == (1, 4, 1)
    assert totals.touchpoints == 4
    assert len(ratings(events)) == 3
    assert timeline_entry(events[0]).summary == "feedback nps 10/10 comment"
