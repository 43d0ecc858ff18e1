"""The voice of the customer, pure: feedback as ratings (version 1 reads as a CSAT score), who is a
detractor or a promoter, the NPS, CSAT and effort figures of a group of ratings, the experience
dimensions per touchpoint and the satisfaction that followed a moment of truth. No I/O.

The figures are computed from counts and sums (`ScoreCounts`), which the store aggregates in SQL
with the thresholds defined here, so the rule lives in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import singledispatch
from typing import Literal

from pydantic import BaseModel

from crm_shared.contracts.events import (
    DETRACTOR_SCORED,
    DetractorScored,
    Event,
    ExperienceDimension,
    FeedbackGiven,
    FeedbackGivenV2,
    Measure,
    RatedItem,
)
from crm_shared.runtime.derived import Derived, derive

SOURCE = "interaction-service"
"""The CloudEvents source of the events the interaction service derives."""

PROMOTER_AT_LEAST = 9
"""NPS 9-10 is a promoter, 7-8 a passive, 0-6 a detractor."""
DETRACTOR_AT_MOST: dict[Measure, int] = {Measure.NPS: 6, Measure.CSAT: 2, Measure.CES: 2}
"""A score at or below this is a detractor's: NPS 0-6, CSAT 1-2 of 5, effort 1-2 of 7."""

FACETS: dict[ExperienceDimension, Literal["functional", "emotional"]] = {
    ExperienceDimension.RELIABILITY: "functional",
    ExperienceDimension.EFFICIENCY: "functional",
    ExperienceDimension.CONVENIENCE: "functional",
    ExperienceDimension.INTEGRITY: "emotional",
}
"""Whether a dimension rates what the experience did (functional) or how it felt (emotional)."""

SATISFACTION_WINDOW = timedelta(days=7)
"""A rating not linked to a moment of truth follows it when given within this time after it."""

Period = Literal["day", "week", "month"]
GroupBy = Literal["touchpoint", "department", "channel"]


@dataclass(frozen=True, slots=True)
class Rating:
    """One score, whatever version of the feedback event carried it."""

    source: str
    event_id: str
    customer_id: str
    occurred_at: datetime
    measure: Measure
    score: int
    kind: str
    channel: str
    touchpoint: str
    department: str | None
    about_kind: str | None
    about_id: str | None
    comment: str | None
    dimensions: Mapping[str, int] = field(default_factory=dict)

    @property
    def about(self) -> RatedItem | None:
        if self.about_kind is None or self.about_id is None:
            return None
        return RatedItem.model_validate({"kind": self.about_kind, "id": self.about_id})


@singledispatch
def as_v2(data: object) -> FeedbackGivenV2:
    """Feedback of any version as version 2 (upcast on read)."""
    raise TypeError(f"{type(data).__name__} is not feedback")


@as_v2.register
def _v2(data: FeedbackGivenV2) -> FeedbackGivenV2:
    return data


@as_v2.register
def _v1(data: FeedbackGiven) -> FeedbackGivenV2:
    return FeedbackGivenV2(
        measure=Measure.CSAT,
        score=data.score,
        kind=data.kind,
        comment=data.comment,
        channel=data.channel,
    )


FEEDBACK_DATA = (FeedbackGiven, FeedbackGivenV2)


def rating_of(event: Event) -> Rating:
    """The rating a feedback event gives; its touchpoint defaults to its channel."""
    data = as_v2(event.data)
    return Rating(
        source=event.source,
        event_id=event.id,
        customer_id=event.customer_id,
        occurred_at=event.time,
        measure=data.measure,
        score=data.score,
        kind=data.kind,
        channel=data.channel.value,
        touchpoint=data.touchpoint or data.channel.value,
        department=data.department,
        about_kind=data.about.kind.value if data.about else None,
        about_id=data.about.id if data.about else None,
        comment=data.comment,
        dimensions={dimension.value: score for dimension, score in data.dimensions.items()},
    )


def ratings(events: Iterable[Event]) -> list[Rating]:
    """The ratings among a batch's events, in batch order."""
    return [rating_of(e) for e in events if type(e.data) in FEEDBACK_DATA]


def is_detractor(measure: Measure, score: int) -> bool:
    return score <= DETRACTOR_AT_MOST[measure]


def is_promoter(measure: Measure, score: int) -> bool:
    return measure is Measure.NPS and score >= PROMOTER_AT_LEAST


def detractor_event(cause: Event, rating: Rating) -> Derived:
    """The derived event announcing a detractor score; its id comes from the feedback's."""
    return derive(
        cause,
        DETRACTOR_SCORED,
        rating.customer_id,
        DetractorScored(
            measure=rating.measure,
            score=rating.score,
            touchpoint=rating.touchpoint,
            department=rating.department,
            about=rating.about,
            feedback_source=rating.source,
            feedback_id=rating.event_id,
        ),
        source=SOURCE,
    )


def detractor_events(events: Iterable[Event]) -> list[Derived]:
    """One derived event per detractor score among the events."""
    derived: list[Derived] = []
    for event in events:
        if type(event.data) in FEEDBACK_DATA:
            rating = rating_of(event)
            if is_detractor(rating.measure, rating.score):
                derived.append(detractor_event(event, rating))
    return derived


# ----------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class ScoreCounts:
    """Counts and sums of a group of ratings: what the figures are computed from."""

    nps_responses: int = 0
    promoters: int = 0
    nps_detractors: int = 0
    csat_responses: int = 0
    csat_sum: int = 0
    effort_responses: int = 0
    effort_sum: int = 0


class Figures(BaseModel):
    """NPS (-100 to 100), mean CSAT (1-5) and mean effort (1-7) of a group of ratings."""

    responses: int
    nps: float | None
    nps_responses: int
    promoters: int
    passives: int
    detractors: int
    csat: float | None
    csat_responses: int
    effort: float | None
    effort_responses: int


def net_promoter_score(promoters: int, detractors: int, responses: int) -> float | None:
    """% promoters minus % detractors, to one decimal; None without responses."""
    if responses <= 0:
        return None
    return round(100 * (promoters - detractors) / responses, 1)


def mean(total: int, count: int) -> float | None:
    return round(total / count, 2) if count > 0 else None


def figures(counts: ScoreCounts) -> Figures:
    return Figures(
        responses=counts.nps_responses + counts.csat_responses + counts.effort_responses,
        nps=net_promoter_score(counts.promoters, counts.nps_detractors, counts.nps_responses),
        nps_responses=counts.nps_responses,
        promoters=counts.promoters,
        passives=counts.nps_responses - counts.promoters - counts.nps_detractors,
        detractors=counts.nps_detractors,
        csat=mean(counts.csat_sum, counts.csat_responses),
        csat_responses=counts.csat_responses,
        effort=mean(counts.effort_sum, counts.effort_responses),
        effort_responses=counts.effort_responses,
    )


def count_scores(scores: Sequence[tuple[Measure, int]]) -> ScoreCounts:
    """The counts of (measure, score) pairs: what the store's SQL aggregates, in Python."""
    nps = [score for measure, score in scores if measure is Measure.NPS]
    csat = [score for measure, score in scores if measure is Measure.CSAT]
    effort = [score for measure, score in scores if measure is Measure.CES]
    return ScoreCounts(
        nps_responses=len(nps),
        promoters=sum(is_promoter(Measure.NPS, s) for s in nps),
        nps_detractors=sum(is_detractor(Measure.NPS, s) for s in nps),
        csat_responses=len(csat),
        csat_sum=sum(csat),
        effort_responses=len(effort),
        effort_sum=sum(effort),
    )


class TrendPoint(BaseModel):
    group: str | None
    """The touchpoint, department or channel; null for ratings that name no department."""
    period_start: datetime
    figures: Figures


def trend(rows: Iterable[tuple[str | None, datetime, ScoreCounts]]) -> list[TrendPoint]:
    """Figures per group and period, by group then period."""
    points = [TrendPoint(group=g, period_start=p, figures=figures(c)) for g, p, c in rows]
    return sorted(points, key=lambda point: (point.group or "", point.period_start))


# ----------------------------------------------------------------------------- dimensions


class DimensionFigure(BaseModel):
    dimension: str
    facet: Literal["functional", "emotional"]
    ratings: int
    mean: float | None


class FacetFigure(BaseModel):
    facet: Literal["functional", "emotional"]
    ratings: int
    mean: float | None


class TouchpointDimensions(BaseModel):
    touchpoint: str
    dimensions: list[DimensionFigure]
    facets: list[FacetFigure]


def dimension_summary(
    rows: Iterable[tuple[str, str, int, int]],
) -> list[TouchpointDimensions]:
    """Per touchpoint: each dimension's mean score (1-5) and the functional and emotional means
    over their dimensions' scores, from (touchpoint, dimension, ratings, score sum) rows."""
    by_touchpoint: dict[str, list[tuple[ExperienceDimension, int, int]]] = {}
    for touchpoint, dimension, count, total in rows:
        by_touchpoint.setdefault(touchpoint, []).append(
            (ExperienceDimension(dimension), count, total)
        )
    summary: list[TouchpointDimensions] = []
    for touchpoint in sorted(by_touchpoint):
        found = sorted(by_touchpoint[touchpoint], key=lambda row: row[0].value)
        facet_totals: dict[Literal["functional", "emotional"], tuple[int, int]] = {}
        for dimension, count, total in found:
            seen, summed = facet_totals.get(FACETS[dimension], (0, 0))
            facet_totals[FACETS[dimension]] = (seen + count, summed + total)
        summary.append(
            TouchpointDimensions(
                touchpoint=touchpoint,
                dimensions=[
                    DimensionFigure(dimension=d.value, facet=FACETS[d], ratings=c, mean=mean(t, c))
                    for d, c, t in found
                ],
                facets=[
                    FacetFigure(facet=facet, ratings=c, mean=mean(t, c))
                    for facet, (c, t) in sorted(facet_totals.items())
                ],
            )
        )
    return summary


# ----------------------------------------------------------------------------- moments of truth


def satisfaction_after(
    moment_at: datetime, rated: RatedItem, customer_ratings: Sequence[Rating]
) -> Rating | None:
    """The satisfaction that followed a moment of truth: the first rating linked to it, else the
    first rating given within SATISFACTION_WINDOW after it."""
    in_time = sorted(customer_ratings, key=lambda r: (r.occurred_at, r.source, r.event_id))
    for rating in in_time:
        if rating.about_kind == rated.kind.value and rating.about_id == rated.id:
            return rating
    for rating in in_time:
        if moment_at <= rating.occurred_at <= moment_at + SATISFACTION_WINDOW:
            return rating
    return None
