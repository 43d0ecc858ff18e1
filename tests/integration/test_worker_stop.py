"""A worker stops promptly on SIGTERM, even in the middle of a long batch and while a periodic
job computes in a thread, and the batch it gave up is folded exactly once at the next start.
The shared worker runtime with a stalling projection (tests/integration/stalling_worker.py) on
the real broker and database."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crm_shared.contracts.sdk import EventPublisher
from tests.conftest import shifted_port
from tests.integration.helpers import eventually, fetch, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STOP_WITHIN = 10.0
"""Generous: the worker's own bound is 8 s (runtime/worker.py STOP_SECONDS)."""
EVENTS = 20
CONTACT = {
    "channel": "phone",
    "direction": "inbound",
    "department": "Customer Service",
    "topic": "late parcel",
    "outcome": "Call-Back",
}


def start(env: dict[str, str], fold_stall: float, job_stall: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.stalling_worker"],
        env={
            **env,
            "CRM_STALLING_FOLD_STALL_SECONDS": str(fold_stall),
            "CRM_STALLING_JOB_STALL_SECONDS": str(job_stall),
        },
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def stop(worker: subprocess.Popen[bytes]) -> tuple[float, int | None]:
    """SIGTERM; the seconds until the process ended (None: killed after 60 s) and its code."""
    signalled = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    try:
        code = worker.wait(60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        return time.monotonic() - signalled, None
    return time.monotonic() - signalled, code


async def test_sigterm_stops_a_worker_mid_batch_within_bounds_and_the_batch_applies_once(
    platform_env: dict[str, str],
) -> None:
    database = unique("crm_stalling").replace("-", "_")
    dsn = f"{platform_env['CRM_PG_DSN_BASE']}/{database}"
    env = {
        **platform_env,
        "CRM_STALLING_DATABASE": database,
        "CRM_STALLING_WORKER_METRICS_PORT": shifted_port(19190),
    }
    prefix = unique("stop")
    with EventPublisher(platform_env["CRM_KAFKA_BOOTSTRAP"], source="test-stop") as publisher:
        for n in range(EVENTS):
            publisher.publish(
                "crm.contact.logged.v1",
                f"{prefix}-C{n}",
                CONTACT,
                event_id=f"{prefix}-{n}",
            )

    async def stalled_folds() -> int:
        """Transactions whose last statement is the fold's insert: not one of the start-up's
        (migrations), which came before the worker's signal handlers and ended it at once."""
        rows = await fetch(
            f"{platform_env['CRM_PG_DSN_BASE']}/postgres",
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1"
            " AND state LIKE 'idle in transaction%' AND query LIKE 'INSERT INTO folded%'",
            database,
        )
        return int(rows[0]["n"])

    worker = start(env, fold_stall=120, job_stall=120)
    try:
        # A batch is folding (its transaction open, the fold stalling) and the job computing.
        await eventually(stalled_folds, lambda n: n > 0, within=90, what="a batch in flight")
    finally:
        seconds, code = stop(worker)
    assert code == 0 and seconds < STOP_WITHIN, f"stopped after {seconds:.1f} s with {code}"

    async def folded() -> tuple[int, int]:
        rows = await fetch(
            dsn,
            "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM folded WHERE id LIKE $1",
            f"{prefix}-%",
        )
        return rows[0]["n"], rows[0]["ids"]

    assert await folded() == (0, 0)  # the stalled batch rolled back
    worker = start(env, fold_stall=0, job_stall=0)
    try:
        found = await eventually(folded, lambda f: f == (EVENTS, EVENTS), within=90, what="folds")
    finally:
        seconds, code = stop(worker)
    assert found == (EVENTS, EVENTS)
    assert code == 0 and seconds < STOP_WITHIN, f"stopped after {seconds:.1f} s with {code}"
