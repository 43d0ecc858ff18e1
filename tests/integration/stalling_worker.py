"""A projection worker that stalls, for the stop test: the shared worker runtime (run_worker)
with a projection of its own over crm.contacts, whose fold keeps the loop busy for
CRM_STALLING_FOLD_STALL_SECONDS after writing, as the CPU of a large batch would, and whose
periodic job computes in a thread for CRM_STALLING_JOB_STALL_SECONDS, as a model fit does.

python -m tests.integration.stalling_worker
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import asyncpg
from pydantic_settings import SettingsConfigDict

from crm_shared.contracts.events import Event
from crm_shared.contracts.topics import CONTACTS
from crm_shared.runtime.config import ServiceSettings
from crm_shared.runtime.derived import Derived
from crm_shared.runtime.projector import PeriodicJob, Projection
from crm_shared.runtime.worker import run_worker

STEP_SECONDS = 0.1
"""The fold's stall goes in steps this long that do not yield, as a fold's CPU-bound steps."""


class StallingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_STALLING_", extra="ignore")

    database: str = "crm_stalling"
    worker_metrics_port: int = 9190
    fold_stall_seconds: float = 0.0
    job_stall_seconds: float = 0.0


@cache
def settings() -> StallingSettings:
    return StallingSettings()


async def fold(conn: asyncpg.Connection, events: Sequence[Event]) -> Sequence[Derived]:
    await conn.execute("INSERT INTO folded SELECT unnest($1::text[])", [e.id for e in events])
    for _ in range(round(settings().fold_stall_seconds / STEP_SECONDS)):
        time.sleep(STEP_SECONDS)  # noqa: ASYNC251 (the point: a step that holds the loop)
        await asyncio.sleep(0)
    return ()


async def compute_in_a_thread(pool: asyncpg.Pool) -> None:
    await asyncio.to_thread(time.sleep, settings().job_stall_seconds)


PROJECTION = Projection(
    name="stalling",
    topics=(CONTACTS,),
    folds=frozenset({"crm.contact.logged.v1"}),
    migrations=Path(__file__).resolve().parent / "stalling_migrations",
    fold=fold,
    periodic=(PeriodicJob("compute", 0.2, compute_in_a_thread),),
)

if __name__ == "__main__":
    run_worker(PROJECTION, settings())
