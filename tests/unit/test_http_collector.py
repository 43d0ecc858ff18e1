"""An API process's start-up objects leave the cyclic collector's reach once its lifespan has
started, and its young generation is collected less often; the lifespan itself is unchanged."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from crm_shared.runtime.http import YOUNG_OBJECTS_PER_COLLECTION, frozen_after_startup


@pytest.fixture
def collector() -> Iterator[None]:
    """The test process's collector as it was, afterwards."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def test_start_up_objects_are_frozen_after_the_lifespan_starts(collector: None) -> None:
    steps: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, str]]:
        steps.append("started")
        assert gc.get_freeze_count() == 0
        yield {"pool": "open"}
        steps.append("stopped")

    gc.unfreeze()
    async with frozen_after_startup(lifespan)(object()) as state:
        assert state == {"pool": "open"}
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == YOUNG_OBJECTS_PER_COLLECTION
    assert steps == ["started", "stopped"]
