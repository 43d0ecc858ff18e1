"""A long-running process, once set up, moves what it made so far out of the cyclic garbage
collector's reach, collects its young generation less often, and says so on /metrics."""

from __future__ import annotations

import gc

from crm_shared.runtime import memory, metrics


def frozen_objects_reported() -> float:
    """What /metrics says: the gauge every process exports with the shared metrics."""
    (family,) = metrics.FROZEN_OBJECTS.collect()
    return family.samples[0].value


def test_start_up_objects_leave_the_collectors_reach(collector: None) -> None:
    # Stand-ins for a process's start-up objects (modules, schemas, pools): containers the
    # collector tracks, which live as long as the process.
    made_at_start_up = [{"n": n} for n in range(50_000)]
    assert frozen_objects_reported() == 0
    walked_before = len(gc.get_objects())

    memory.freeze_startup_objects()

    assert gc.get_freeze_count() >= len(made_at_start_up)
    assert len(gc.get_objects()) < walked_before - len(made_at_start_up)
    assert frozen_objects_reported() == gc.get_freeze_count()
    assert gc.get_threshold()[0] == memory.YOUNG_OBJECTS_PER_COLLECTION
    # What comes after is collected as usual: a cycle made now is found and freed.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1
