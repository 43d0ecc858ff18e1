"""Supervision: a worker or API whose OS process is SIGKILLed comes back on its own, within a
bounded time, its restart is reported, and the projection loses nothing meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from crm_shared.contracts.sdk import EventPublisher
from crm_shared.ops import launcher
from crm_shared.ops.demo.workload import Workload
from tests.integration.helpers import eventually, fetch, get_json, service_auth, unique
from tests.integration.test_crash_recovery import independent_fold, projections, publish

pytestmark = pytest.mark.integration

# The first restart waits RestartPolicy.first_delay (1 s); a worker then needs 5-20 s (measured
# on 2 cores, under load) to open its database, join its group and serve /metrics.
BACK_WITHIN = 45.0


def kill_and_wait_for_restart(
    process: launcher.Process, env: dict[str, str]
) -> tuple[launcher.Supervision, launcher.Supervision, float]:
    """SIGKILL the process itself (not its supervisor) by pid; wait until its supervisor has
    started it again and it answers. Returns the status before and after, and the seconds it
    took."""
    before = launcher.status(process, env)
    assert before is not None and before.pid is not None, f"{process.name} is not running"
    killed_at = time.monotonic()
    os.kill(before.pid, signal.SIGKILL)
    deadline = killed_at + BACK_WITHIN
    while True:
        after = launcher.status(process, env)
        assert after is not None, f"the supervisor of {process.name} is gone"
        if after.restarts > before.restarts and after.pid is not None:
            break
        assert time.monotonic() < deadline, f"{process.name} not restarted: {after}"
        time.sleep(0.1)
    launcher.wait_healthy([process], env, timeout=max(deadline - time.monotonic(), 1))
    return before, after, time.monotonic() - killed_at


def status_output(env: dict[str, str], process: launcher.Process) -> str:
    """What `./crm status` prints for the process (it runs this command)."""
    result = subprocess.run(
        [sys.executable, "-m", "crm_shared.ops.launcher", "status", "--only", process.name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


async def test_a_worker_killed_mid_stream_is_restarted_and_loses_nothing(
    platform: dict[str, str],
) -> None:
    worker = launcher.BY_NAME["profile-worker"]
    prefix = unique("supervised")
    events = list(Workload(seed=13, customers=300, products=100, prefix=prefix).events(12_000))
    expected = independent_fold(events)["totals"]
    publisher = threading.Thread(
        target=publish, args=(platform["CRM_KAFKA_BOOTSTRAP"], events, 1_500)
    )
    publisher.start()
    try:
        part_way = await eventually(
            lambda: fetch(
                f"{platform['CRM_PG_DSN_BASE']}/crm_profile",
                "SELECT count(*) AS n FROM applied_events WHERE id LIKE $1",
                f"{prefix}-%",
            ),
            lambda rows: rows[0]["n"] > 500,
            what="the profile worker to be part-way through the stream",
        )
        before, after, took = kill_and_wait_for_restart(worker, platform)
    finally:
        publisher.join()

    # Mid-stream for the worker: it had events left to fold when it was killed (the publisher
    # may have finished by then: a busy machine folds slower than 1,500 events/s).
    assert part_way[0]["n"] < len(events), "the worker had folded everything before the kill"
    assert after.restarts == before.restarts + 1
    assert after.pid != before.pid
    assert after.last_exit == -signal.SIGKILL
    assert took < BACK_WITHIN
    line = status_output(platform, worker)
    assert f"running pid {after.pid}" in line
    assert f"restarts {before.restarts + 1}" in line
    assert "killed by SIGKILL" in line

    async def totals() -> dict[str, tuple[object, ...]]:
        return (await projections(platform["CRM_PG_DSN_BASE"], prefix))["totals"]

    found = await eventually(
        totals, lambda f: f == expected, within=180, what="the totals of every event published"
    )
    assert found == expected
    assert len(expected) > 100


async def test_a_killed_api_is_restarted_and_answers_again(platform: dict[str, str]) -> None:
    api = launcher.BY_NAME["profile-api"]
    customer = unique("api")
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="shop") as sdk:
        sdk.publish("crm.customer.registered.v1", customer, {"name": "Ada"})
    url = f"http://127.0.0.1:{api.port(platform)}/customers/{customer}"
    await eventually(
        lambda: get_json(url, headers=service_auth(platform)),
        lambda r: r[0] == 200,
        what="the customer",
    )

    before, after, took = kill_and_wait_for_restart(api, platform)

    assert after.restarts == before.restarts + 1
    assert after.last_exit == -signal.SIGKILL
    assert took < BACK_WITHIN
    status, body = await get_json(url, headers=service_auth(platform))
    assert status == 200
    assert body["name"] == "Ada"


def test_a_process_killed_with_its_supervisor_starts_again_at_once(
    platform: dict[str, str],
) -> None:
    """SIGKILL the supervisor and its process together, then `launcher start` at once: the pid
    file names a zombie nobody has collected yet, which must count as dead, not as running."""
    api = launcher.BY_NAME["recommendation-api"]
    old = launcher.status(api, platform)
    assert old is not None and old.pid is not None
    os.killpg(old.supervisor_pid, signal.SIGKILL)

    subprocess.run(
        [sys.executable, "-m", "crm_shared.ops.launcher", "start", "--only", api.name],
        env=platform,
        capture_output=True,
        timeout=120,
        check=True,
    )

    new = launcher.status(api, platform)
    assert new is not None and new.pid is not None
    assert new.supervisor_pid != old.supervisor_pid
    assert new.pid != old.pid
    assert new.restarts == 0
