"""Fixtures shared by the integration and end-to-end tests.

They talk to the real Kafka broker and PostgreSQL that `./crm test` starts (CRM_KAFKA_BOOTSTRAP,
CRM_PG_DSN_BASE) and run the platform's real processes on test ports.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterator

import pytest

from crm_shared.ops import launcher
from tests import case_scenario


def shifted_port(base: int) -> str:
    """A test port, shifted by ./crm test's CRM_TEST_SLOT so that checkouts run side by side.

    The shift is 100 a slot: with 1000, slot N's API ports (18100 + 1000 N) were slot N-1's
    worker metrics ports (19101 + 1000 (N-1)).
    """
    return str(base + 100 * int(os.environ.get("CRM_TEST_SLOT", "0")))


TEST_PORTS = {
    process.port_env: shifted_port(process.default_port + 10_000) for process in launcher.PROCESSES
}
"""Every process on its default port + 10,000 (+ the slot's shift), read from the roots."""
TEST_PORTS |= {
    f"CRM_GATEWAY_{process.service.upper()}_URL": f"http://127.0.0.1:{TEST_PORTS[process.port_env]}"
    for process in launcher.PROCESSES
    if process.component == "api" and process.service != "gateway"
}
TEST_SETTINGS = {"CRM_CLOCK_INTERVAL_SECONDS": "1", "CRM_PROFILE_HALT_RETRY_SECONDS": "1"}
TEST_SETTINGS["CRM_CASES_COST_PER_HOUR"] = json.dumps(
    {department: str(rate) for department, rate in case_scenario.CASE_RATES.items()}
)
"""A fast clock and quick retries of a halted worker, so tests need not wait minutes."""


SENDER_SETTINGS = {
    "CRM_BROADCAST_SMTP_PORT": shifted_port(12525),
    "CRM_BROADCAST_WEBHOOK_URLS": json.dumps(
        {ch: f"http://127.0.0.1:{shifted_port(12580)}/{ch}" for ch in ("sms", "push")}
    ),
    "CRM_BROADCAST_LEASE_SECONDS": "3",
    "CRM_BROADCAST_RETRY_BASE_SECONDS": "0.5",
    "CRM_BROADCAST_RETRY_CAP_SECONDS": "2",
    "CRM_BROADCAST_MAX_ATTEMPTS": "3",
    "CRM_BROADCAST_IDLE_SECONDS": "0.2",
}
"""The sender sends to the SMTP and webhook servers the delivery tests run on these ports, and
retries and takes over dead senders' messages within seconds."""
TEST_SETTINGS |= SENDER_SETTINGS

CHECK_RESPONSES = {"CRM_CHECK_RESPONSES": "1"}
"""Every API the suite builds in its own process or starts checks its DirectRoutes' answers
against their response models (crm_shared.runtime.http.DirectRoute), which production skips."""
os.environ.update(CHECK_RESPONSES)

# The whole suite runs with the service APIs guarded: they require it, the gateway presents it.
SERVICE_TOKEN = {"CRM_SERVICE_TOKEN": secrets.token_urlsafe(32)}
LINK_SECRET = {"CRM_LINK_SECRET": secrets.token_hex(32)}
"""Signs the links in messages: the broadcast planner and sender mint them, the gateway reads
them."""


def _reachable(host_port: str) -> bool:
    host, port = host_port.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def platform_env() -> dict[str, str]:
    """The environment of the platform under test; fails loudly outside `./crm test`."""
    bootstrap = os.environ.get("CRM_KAFKA_BOOTSTRAP")
    dsn_base = os.environ.get("CRM_PG_DSN_BASE")
    if not bootstrap or not dsn_base:
        pytest.fail("integration tests need the broker and database: run them with ./crm test")
    for host_port in (bootstrap, dsn_base.rsplit("@", 1)[-1]):
        if not _reachable(host_port):
            pytest.fail(f"{host_port} does not answer: run the suite with ./crm test")
    return {**os.environ, **TEST_PORTS, **TEST_SETTINGS, **SERVICE_TOKEN, **LINK_SECRET}


@pytest.fixture(scope="session")
def platform(platform_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Every worker and API of the platform, running as real processes for the whole session,
    each under its supervisor as with `./crm up`."""
    for process in launcher.PROCESSES:
        launcher.start(process, platform_env)
    try:
        launcher.wait_healthy(launcher.PROCESSES, platform_env)
        yield platform_env
    finally:
        for process in launcher.PROCESSES:
            launcher.stop(process, platform_env)
