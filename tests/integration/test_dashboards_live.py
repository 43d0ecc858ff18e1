"""Every dashboard panel's query, against a real Prometheus scraping the running platform."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from crm_shared.contracts.sdk import EventPublisher
from crm_shared.ops import launcher
from tests.integration.helpers import eventually, service_auth, unique
from tests.observability import dashboard_generator, get_json, query, running_prometheus

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Panels whose series must exist as soon as events flow and requests are served.
MUST_HAVE_DATA = (
    "crm_events_applied_total",
    "crm_projection_freshness_seconds",
    "crm_http_requests_total",
    "crm_projection_halted",
    "crm_outbox_backlog",
    "crm_clock_timestamp_seconds",
    "crm_clock_last_tick_timestamp_seconds",
    "crm_broadcast_decisions_total",
)


def scrape_config(env: dict[str, str]) -> str:
    """deploy/prometheus/prometheus.yml with the test ports instead of the defaults."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ROOT / "deploy/prometheus" / name) for name in config["rule_files"]]
    ports = {str(p.default_port): str(p.port(env)) for p in launcher.PROCESSES}
    for job in config["scrape_configs"]:
        for group in job["static_configs"]:
            group["targets"] = [
                f"{host}:{ports[port]}"
                for host, port in (t.rsplit(":", 1) for t in group["targets"])
            ]
    return yaml.safe_dump(config)


async def _refuse_a_contact(platform: dict[str, str], sdk: EventPublisher, customer: str) -> None:
    """A customer with an e-mail set-up but no consent: asking to market to them is refused
    (no_consent), which the "Why customers were not contacted" panel shows."""
    sdk.publish(
        "crm.channel_preference.set.v2",
        customer,
        {"channels": [{"channel": "email", "address": f"{customer}@example.com"}]},
    )
    port = platform["CRM_BROADCAST_API_PORT"]
    url = f"http://127.0.0.1:{port}/customers/{customer}/decision?purpose=marketing"
    async with httpx.AsyncClient(headers=service_auth(platform), timeout=5) as client:
        decision = await eventually(
            lambda: client.get(url),
            lambda r: r.status_code == 200,
            what="a contact decision once the set-up is folded",
        )
    assert decision.json()["channel"] is None, decision.text


async def test_every_panel_query_answers_from_the_running_platform(
    platform: dict[str, str], tmp_path: Path
) -> None:
    customer = unique("dash")
    with running_prometheus(scrape_config(platform), tmp_path) as url:
        with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="dashboard-test") as sdk:
            for n in range(20):
                sdk.publish(
                    "crm.order.placed.v1",
                    customer,
                    {
                        "order_id": f"{customer}-{n}",
                        "lines": [{"product_id": "P1", "quantity": 1, "unit_price": "1"}],
                    },
                )
                await asyncio.sleep(0.2)
            await _refuse_a_contact(platform, sdk, customer)
        await asyncio.sleep(3)  # a few more scrapes, so that rate() has two samples
        _, up = query(url, "up")
        targets = {r["metric"]["job"]: r["value"][1] for r in up["data"]["result"]}
        assert set(targets) == {p.name for p in launcher.PROCESSES}
        assert all(value == "1" for value in targets.values()), targets

        failures, empty = [], []
        for expr in dashboard_generator().prometheus_queries():
            status, body = query(url, expr)
            if body.get("status") != "success":
                failures.append(f"{expr} -> HTTP {status}: {body.get('error')}")
            elif not body["data"]["result"] and any(m in expr for m in MUST_HAVE_DATA):
                empty.append(expr)
        assert not failures, "\n".join(failures)
        assert not empty, "panels without data while the platform runs:\n" + "\n".join(empty)

        _, rules = get_json(f"{url}/api/v1/rules")
        loaded = [r for g in rules["data"]["groups"] for r in g["rules"]]
        assert {r["name"] for r in loaded} >= {"CrmConsumerHalted", "CrmOutboxStuck"}
        assert all(r["health"] == "ok" for r in loaded), loaded
        firing = {r["name"] for r in loaded if r["state"] != "inactive"}
        assert not firing & {"CrmConsumerHalted", "CrmClockStopped", "CrmProcessDown"}, firing
