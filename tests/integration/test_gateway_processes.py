"""The gateway serves its port from several processes (CRM_GATEWAY_API_PROCESSES, two by
default): /metrics adds up what all of them served, one killed is replaced with its counts kept,
and the gateway killed as a whole takes them with it, so that it binds its port again when its
supervisor starts it anew, and removes the metrics directory the killed one left."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import httpx
import pytest

from crm_shared.ops import launcher
from gateway_service.config import GatewaySettings
from tests.integration.helpers import eventually, metric_value
from tests.integration.test_supervision import kill_and_wait_for_restart

pytestmark = pytest.mark.integration

GATEWAY = launcher.BY_NAME["gateway-api"]
PROCESSES = GatewaySettings.model_fields["api_processes"].default
HEALTH_CHECKS = (
    'crm_http_requests_total{method="GET",route="/healthz",service="gateway",status="200"}'
)


def _serving(parent: int) -> set[int]:
    """The processes serving the port: the children of uvicorn's supervisor that run the app
    (multiprocessing's resource tracker is a child too)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        parent_of_entry = int(stat.rpartition(")")[2].split()[1])
        if parent_of_entry == parent and b"spawn_main" in command:
            found.add(int(entry.name))
    return found


async def _health_checks_on_new_connections(port: int, times: int) -> None:
    """Each on a connection of its own, so that the kernel hands them to any of the processes."""
    for _ in range(times):
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"http://127.0.0.1:{port}/healthz")
        assert response.status_code == 200


async def test_the_processes_count_together_and_one_killed_is_replaced(
    platform: dict[str, str],
) -> None:
    port = GATEWAY.port(platform)
    parent = launcher.running_pid(GATEWAY, platform)
    assert parent is not None
    serving = _serving(parent)
    assert len(serving) == PROCESSES == 2

    before = await metric_value(str(port), HEALTH_CHECKS) or 0.0
    await _health_checks_on_new_connections(port, 40)
    counted = await metric_value(str(port), HEALTH_CHECKS)
    assert counted == before + 40

    killed = min(serving)
    os.kill(killed, signal.SIGKILL)
    assert launcher.wait_until(
        lambda: killed not in _serving(parent) and len(_serving(parent)) == PROCESSES, 45
    ), "uvicorn did not replace the killed process"
    assert launcher.running_pid(GATEWAY, platform) == parent  # the gateway itself stayed up
    # The fewest frozen objects of the live processes: 0 until the replacement is set up.
    await eventually(
        lambda: metric_value(str(port), "crm_gc_frozen_objects"),
        lambda frozen: frozen is not None and frozen > 0,
        within=45,
        what="the replacement to be set up",
    )
    await _health_checks_on_new_connections(port, 10)
    # What the killed process served is still counted, beside its replacement's.
    assert await metric_value(str(port), HEALTH_CHECKS) == counted + 10


def test_the_gateway_killed_takes_its_processes_with_it_and_binds_again(
    platform: dict[str, str],
) -> None:
    parent = launcher.running_pid(GATEWAY, platform)
    assert parent is not None
    serving = _serving(parent)
    assert serving

    left = list(Path(tempfile.gettempdir()).glob(f"crm-*-metrics-{parent}-*"))
    assert len(left) == 1, "the gateway's processes share no metrics directory named for it"

    before, after, _ = kill_and_wait_for_restart(GATEWAY, platform)

    assert after.restarts == before.restarts + 1 and after.pid is not None
    assert launcher.wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in serving), 10
    ), "the killed gateway's processes did not stop"
    assert len(_serving(after.pid)) == PROCESSES
    assert not left[0].exists(), "the killed gateway's metrics directory was left behind"
    assert list(Path(tempfile.gettempdir()).glob(f"crm-*-metrics-{after.pid}-*"))
