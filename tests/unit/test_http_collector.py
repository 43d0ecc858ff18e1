"""An API process's start-up objects leave the cyclic collector's reach once its lifespan has
started, and its young generation is collected less often; the lifespan itself is unchanged."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from crm_shared.runtime.http import freeze_after_startup, frozen_after_startup
from crm_shared.runtime.memory import YOUNG_OBJECTS_PER_COLLECTION


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


async def test_an_app_served_runs_its_own_lifespan_then_freezes(collector: None) -> None:
    # Through the ASGI lifespan protocol, as uvicorn starts and stops an app.
    steps: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        steps.append("started")
        yield
        steps.append("stopped")

    gc.unfreeze()
    app = freeze_after_startup(FastAPI(lifespan=lifespan))
    frozen_when_started: list[int] = []
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, str]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        steps.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            frozen_when_started.append(gc.get_freeze_count())

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert steps == [
        "started",
        "lifespan.startup.complete",
        "stopped",
        "lifespan.shutdown.complete",
    ]
    assert frozen_when_started[0] > 0
