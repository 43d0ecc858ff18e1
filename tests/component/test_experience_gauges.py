"""The experience gauges are set from the tables (right after a restart too): the newest
rating's event time per channel, which the silent-channel alert watches, and the NPS per
touchpoint over the 30 days before the projection's time, on real PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import Gauge

from crm_shared.contracts.events import build_event, parse_event
from crm_shared.runtime.db import open_pool
from interaction_service import metrics, store
from interaction_service.config import MIGRATIONS
from interaction_service.experience import Rating, rating_of
from interaction_service.experience_fold import refresh_gauges

pytestmark = pytest.mark.component

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def _rating(n: int, channel: str, touchpoint: str, measure: str, score: int, days: int) -> Rating:
    """The rating the worker keeps for such a feedback event."""
    data = {"measure": measure, "score": score, "channel": channel, "touchpoint": touchpoint}
    raw = build_event(
        "crm.feedback.given.v2",
        f"C-{n}",
        data,
        source="survey-tool",
        time=T0 + timedelta(days=days),
        event_id=f"gauge-{n}",
    )
    return rating_of(parse_event(json.dumps(raw).encode()))


def _values(gauge: Gauge, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for family in gauge.collect() for s in family.samples}


async def test_the_gauges_show_each_channels_newest_rating_and_the_recent_nps(
    fresh_dsn: str,
) -> None:
    ratings = [
        _rating(0, "email", "desk", "nps", 10, 0),
        _rating(1, "email", "desk", "nps", 3, 2),
        _rating(2, "email", "desk", "csat", 5, 1),
        _rating(3, "phone", "call", "nps", 0, 3),  # the projection's time: T0 + 3 days
        _rating(4, "web", "call", "nps", 10, -40),  # over 30 days before it: not in NPS
    ]
    pool = await open_pool(fresh_dsn, MIGRATIONS, 1)
    try:
        async with pool.acquire() as conn:
            await store.add_ratings(conn, ratings)
        await refresh_gauges(pool)
    finally:
        await pool.close()

    newest = _values(metrics.FEEDBACK_LAST_TIME, "channel")
    assert {channel: newest[channel] for channel in ("email", "phone", "web")} == {
        "email": (T0 + timedelta(days=2)).timestamp(),
        "phone": (T0 + timedelta(days=3)).timestamp(),
        "web": (T0 - timedelta(days=40)).timestamp(),
    }
    # desk: one promoter, one detractor (CSAT is no NPS answer); call: only the detractor's 0.
    assert _values(metrics.NPS, "touchpoint") == {"desk": 0.0, "call": -100.0}
