"""The soak's verdict on memory: settled (after the warm-up) against the end of the run."""

from __future__ import annotations

import pytest

from bench.soak import drift, verdicts


def test_flat_memory_after_the_warm_up_shows_no_drift() -> None:
    warm_up = [60.0, 80.0]
    settled, final, change = drift(warm_up + [100.0] * 8)
    assert (settled, final, change) == (100.0, 100.0, 0.0)


def test_growing_memory_shows_as_the_relative_change() -> None:
    samples = [50.0, 80.0, 100.0, 100.0, 110.0, 120.0, 130.0, 140.0, 150.0, 150.0]
    settled, final, change = drift(samples)
    assert settled == 100.0
    assert final == 150.0
    assert change == pytest.approx(0.5)


def test_a_jobs_process_gets_a_memory_verdict_and_the_lag_stays_its_projections() -> None:
    rss = {
        "recommendation-worker": [100.0] * 10,
        "recommendation-jobs": [100.0] * 5 + [200.0] * 5,
    }
    report = verdicts(rss, {"recommendation": [0, 40, 5]})
    assert report["memory"]["recommendation-worker"]["flat"] is True
    assert report["memory"]["recommendation-jobs"]["flat"] is False
    assert report["lag"] == {"recommendation": {"max": 40, "last": 5}}
