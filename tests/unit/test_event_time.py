"""Events dated too far in the future are refused: they would win last-writer-wins forever."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crm_shared.contracts.events import InvalidEvent, build_event, check_not_future, validate_event

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _event_at(time: datetime):
    return validate_event(
        build_event(
            "crm.consent.granted.v1", "C-1", {"purpose": "marketing"}, source="t", time=time
        )
    )


def test_an_event_within_the_skew_is_accepted() -> None:
    check_not_future(_event_at(NOW + timedelta(minutes=5)), NOW)
    check_not_future(_event_at(NOW - timedelta(days=3650)), NOW)


def test_an_event_dated_2099_is_refused_with_the_reason() -> None:
    with pytest.raises(InvalidEvent, match="in the future"):
        check_not_future(_event_at(datetime(2099, 1, 1, tzinfo=UTC)), NOW)


def test_the_skew_is_configurable() -> None:
    event = _event_at(NOW + timedelta(seconds=30))
    check_not_future(event, NOW, timedelta(minutes=1))
    with pytest.raises(InvalidEvent, match="more than 10 s after"):
        check_not_future(event, NOW, timedelta(seconds=10))
