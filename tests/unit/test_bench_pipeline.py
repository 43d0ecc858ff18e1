"""The paced publisher's records: each carries the moment it falls due on the schedule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from bench.pipeline import live
from crm_shared.ops.demo.workload import Workload


def test_a_paced_record_carries_the_moment_it_falls_due_not_when_it_is_drawn() -> None:
    before = datetime.now(UTC)
    records = live(Workload(seed=1, prefix="paced"), 3, rate=4.0)
    after = datetime.now(UTC)
    times = [datetime.fromisoformat(json.loads(value)["time"]) for _, _, value in records]
    # drawn at once, yet a quarter of a second apart: the wait for a tick counts in freshness
    assert [t - times[0] for t in times] == [timedelta(seconds=s) for s in (0, 0.25, 0.5)]
    assert before + timedelta(seconds=0.25) <= times[0] <= after + timedelta(seconds=0.25)
