"""The soak's verdict on memory: settled (after the warm-up) against the end of the run."""

from __future__ import annotations

import pytest

from bench.soak import drift


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
