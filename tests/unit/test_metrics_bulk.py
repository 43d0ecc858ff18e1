"""The bulk histogram observation the projector uses gives what one observe per amount gives."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from crm_shared.runtime.metrics import observe_many

AMOUNTS = [0.0, 0.004, 0.01, 0.0100001, 0.3, 0.3, 7.5, 59.9, 1e6, -1.0, 2.5]


def _samples(observe_all: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    histogram = Histogram(
        "freshness_seconds", "test", ["projection"], buckets=(0.01, 0.5, 2.5, 60), registry=registry
    )
    child = histogram.labels("p")
    if observe_all == "one by one":
        for amount in AMOUNTS:
            child.observe(amount)
    else:
        observe_many(child, AMOUNTS)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_observing_a_batch_at_once_exposes_what_observing_each_amount_exposes() -> None:
    one_by_one, at_once = _samples("one by one"), _samples("at once")
    assert one_by_one.keys() == at_once.keys()
    for key, value in one_by_one.items():
        assert at_once[key] == pytest.approx(value), key
    assert one_by_one[("freshness_seconds_count", (("projection", "p"),))] == len(AMOUNTS)
