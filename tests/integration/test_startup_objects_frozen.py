"""Every long-running process of the platform, once set up, keeps its start-up objects out of
the cyclic garbage collector's reach (docs/decisions.md, "Start-up objects frozen"): each full
collection would walk them all, a pause of the worker's batch or of the requests in flight."""

from __future__ import annotations

import pytest

from crm_shared.ops import launcher
from tests.integration.helpers import eventually, metric_value

pytestmark = pytest.mark.integration

AT_LEAST = 20_000
"""Fewer than any of our processes makes before it is set up (modules, pydantic schemas, faust's
app): 100,000 to 180,000 objects."""


async def test_every_process_froze_its_start_up_objects(platform: dict[str, str]) -> None:
    async def frozen() -> dict[str, float | None]:
        return {
            process.name: await metric_value(str(process.port(platform)), "crm_gc_frozen_objects")
            for process in launcher.PROCESSES
        }

    # The gateway answers once one of its processes has started; the gauge is the fewest of its
    # live processes, so it waits for the last of them to be set up.
    await eventually(
        frozen,
        lambda found: all(count is not None and count >= AT_LEAST for count in found.values()),
        within=60,
        what="every process to freeze its start-up objects",
    )
