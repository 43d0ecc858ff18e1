"""The platform's background work (periodic jobs and their database work) runs at a lower CPU
priority than the folds, so that a job's burst does not hold back freshness on a small machine."""

from __future__ import annotations

import os

import pytest

from crm_shared.ops import launcher
from crm_shared.runtime.db import BACKGROUND_NICENESS, BACKGROUND_SETTINGS
from tests.integration.helpers import eventually, fetch

pytestmark = pytest.mark.integration


def niceness(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def pid_of(name: str, env: dict[str, str]) -> int:
    status = launcher.status(launcher.BY_NAME[name], env)
    assert status is not None and status.pid is not None, f"{name} is not running"
    return status.pid


async def test_jobs_and_their_database_work_run_below_the_folds(platform: dict[str, str]) -> None:
    assert niceness(pid_of("recommendation-jobs", platform)) == BACKGROUND_NICENESS
    assert niceness(pid_of("profile-worker", platform)) < BACKGROUND_NICENESS

    async def server_priorities() -> dict[tuple[str, bool], set[int]]:
        """The niceness of every server process, by database and whether it is background."""
        rows = await fetch(
            f"{platform['CRM_PG_DSN_BASE']}/postgres",
            "SELECT datname, application_name, pid FROM pg_stat_activity"
            " WHERE datname LIKE 'crm\\_%' AND pid <> pg_backend_pid()",
        )
        found: dict[tuple[str, bool], set[int]] = {}
        for row in rows:
            background = row["application_name"] == BACKGROUND_SETTINGS["application_name"]
            found.setdefault((row["datname"], background), set()).add(niceness(row["pid"]))
        return found

    # The profile worker folds through one pool and runs its RFM, cube and lifetime-value jobs
    # through another; the recommendation jobs process works through background ones only.
    found = await eventually(
        server_priorities,
        lambda found: all(
            found.get((database, True)) == {BACKGROUND_NICENESS}
            for database in ("crm_profile", "crm_recommendation")
        ),
        what="background server processes at the background niceness",
    )
    ordinary = set().union(*(found[key] for key in found if not key[1]))
    assert ordinary and max(ordinary) < BACKGROUND_NICENESS
