"""The container deployment and the observability-as-code files.

- docker-compose.yml is valid for `docker-compose config` and wires the platform as intended,
  the service APIs guarded by the token the gateway holds;
- deploy/docker/Dockerfile copies every workspace member;
- the Prometheus scrape configs (local and compose) name the same jobs and ports, and promtool
  accepts them;
- the Grafana dashboards are up to date with their generator (`generate.py --check`), use the
  provisioned datasource and only the platform's real metric names;
- (integration) every panel query is valid PromQL for a real Prometheus server.

docker-compose, prometheus and promtool come from Debian
(apt-get install -y prometheus docker-compose).
A missing tool fails the test (with that hint) rather than skipping it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from crm_shared.ops import launcher
from crm_shared.runtime.service import Process
from tests.observability import GENERATOR, dashboard_generator, query, require, running_prometheus

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
PROMETHEUS_LOCAL = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS_DOCKER = ROOT / "deploy" / "prometheus" / "prometheus.docker.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"

# compose service -> the platform's process (the gateway's compose service is "gateway")
PROCESSES: dict[str, Process] = {
    "gateway" if process.name == "gateway-api" else process.name: process
    for process in launcher.PROCESSES
}
# The internal APIs: on the compose network for the gateway, behind the service token.
SERVICE_APIS = [
    name
    for name, process in PROCESSES.items()
    if process.component == "api" and process.service != "gateway"
]


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return dashboard_generator()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


# ----------------------------------------------------------------------------- docker-compose


def _compose_config(service_token: str | None) -> subprocess.CompletedProcess[str]:
    """`docker-compose config`: the file as compose resolves it, with this CRM_SERVICE_TOKEN."""
    binary = require("docker-compose")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("COMPOSE_") and k != "CRM_SERVICE_TOKEN"
    }
    if service_token is not None:
        env["CRM_SERVICE_TOKEN"] = service_token
    return subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_docker_compose_config_is_valid() -> None:
    token = "compose-check-0123456789abcdef"
    result = _compose_config(token)
    assert result.returncode == 0, (
        f"docker-compose config failed ({result.returncode}):\n{result.stderr}{result.stdout}"
    )
    resolved = yaml.safe_load(result.stdout)["services"]
    for name in (*SERVICE_APIS, "gateway"):
        assert resolved[name]["environment"]["CRM_SERVICE_TOKEN"] == token, name


def test_docker_compose_refuses_to_run_without_a_service_token() -> None:
    result = _compose_config(None)
    assert result.returncode != 0
    assert "set CRM_SERVICE_TOKEN" in result.stderr


def test_compose_wires_the_platform(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "compose spec files have no `version:` key"
    services: dict[str, Any] = compose["services"]
    expected = {"kafka", "postgres", "bootstrap", "demo-load", "prometheus", "grafana"}
    assert expected | set(PROCESSES) <= set(services)

    kafka_env = services["kafka"]["environment"]
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert str(kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
    assert kafka_env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "healthcheck" in services["kafka"]
    assert services["postgres"]["image"] == "postgres:15"
    assert "healthcheck" in services["postgres"]

    assert services["bootstrap"]["command"][-1] == "crm_shared.ops.bootstrap"
    assert services["bootstrap"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["demo-load"]["profiles"] == ["demo"]
    assert services["demo-load"]["command"][-1] == "crm_shared.ops.demo.load"
    assert "8100:8100" in services["gateway"]["ports"]

    python_services = {"bootstrap", "demo-load", *PROCESSES}
    for name in python_services:
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile", name
        assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        env = service["environment"]
        assert env["CRM_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert env["CRM_PG_DSN_BASE"] == "postgresql://crm:crm@postgres:5432", name
        if name != "bootstrap":
            assert service["depends_on"]["bootstrap"] == {
                "condition": "service_completed_successfully"
            }, name
            assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}, name

    for name, process in PROCESSES.items():
        service = services[name]
        assert service["command"] == ["python", "-m", process.module], name
        assert service["environment"][process.port_env] == str(process.default_port), name

    # Every service API listens beyond loopback, so it must hold the token the gateway holds,
    # taken from the environment with no default (compose fails when it is unset).
    gateway_token = services["gateway"]["environment"]["CRM_SERVICE_TOKEN"]
    assert gateway_token.startswith("${CRM_SERVICE_TOKEN:?"), gateway_token
    assert len(SERVICE_APIS) == 4
    for name in SERVICE_APIS:
        env = services[name]["environment"]
        label = PROCESSES[name].service
        assert env[f"CRM_{label.upper()}_API_HOST"] == "0.0.0.0", name
        assert env["CRM_SERVICE_TOKEN"] == gateway_token, name
        assert "ports" not in services[name], f"{name} is internal: only the gateway is published"
    for name in {"bootstrap", "demo-load", *PROCESSES} - {"gateway", *SERVICE_APIS}:
        assert "CRM_SERVICE_TOKEN" not in services[name]["environment"], f"{name} needs no token"

    for name, service in services.items():
        one_shot = name in {"bootstrap", "demo-load"}
        # What dies is started again, like the local supervisor does; one-shots run once.
        assert service.get("restart") == ("no" if one_shot else "unless-stopped"), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"

    prometheus_mounts = services["prometheus"]["volumes"]
    assert (
        "./deploy/prometheus/prometheus.docker.yml:/etc/prometheus/prometheus.yml:ro"
        in prometheus_mounts
    )
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus_mounts
    grafana_env = services["grafana"]["environment"]
    assert str(grafana_env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "true"
    assert grafana_env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_dockerfile_copies_every_workspace_member() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    members = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["uv"][
        "workspace"
    ]["members"]
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "uv sync --frozen --no-dev" in text
    assert re.search(r"^COPY pyproject\.toml uv\.lock \./$", text, re.M)
    for member in members:
        assert re.search(rf"^COPY {re.escape(member)}/ {re.escape(member)}/$", text, re.M), member
    assert re.search(r"^\s*PATH=/app/\.venv/bin:\$PATH", text, re.M)
    assert not re.search(r"^(CMD|ENTRYPOINT)\b", text, re.M)


# ----------------------------------------------------------------------------- Prometheus


def _scrape_jobs(path: Path) -> dict[str, tuple[str, dict[str, str]]]:
    config = _load_yaml(path)
    assert config["global"]["scrape_interval"] == "5s", path
    jobs: dict[str, tuple[str, dict[str, str]]] = {}
    for job in config["scrape_configs"]:
        (static,) = job["static_configs"]
        (target,) = static["targets"]
        jobs[job["job_name"]] = (target, static["labels"])
    return jobs


def test_prometheus_configs_scrape_every_process() -> None:
    local = _scrape_jobs(PROMETHEUS_LOCAL)
    docker = _scrape_jobs(PROMETHEUS_DOCKER)
    assert set(local) == set(docker)
    assert len(local) == len(PROCESSES)
    seen: set[str] = set()
    for job, (docker_target, labels) in docker.items():
        host, port = docker_target.rsplit(":", 1)
        assert host in PROCESSES, f"{job}: {host} is no compose service"
        process = PROCESSES[host]
        label, component, expected_port = process.service, process.component, process.default_port
        assert int(port) == expected_port, job
        assert labels == {"service": label, "component": component}, job
        assert local[job] == (f"127.0.0.1:{expected_port}", labels), job
        seen.add(host)
    assert seen == set(PROCESSES)


def test_promtool_accepts_the_prometheus_configs() -> None:
    promtool = require("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_LOCAL), str(PROMETHEUS_DOCKER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- Grafana


def test_grafana_dashboards_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (
        "deploy/grafana/dashboards differ from deploy/grafana/generate.py; run "
        f"`uv run python deploy/grafana/generate.py`:\n{result.stdout}{result.stderr}"
    )


def test_generator_check_detects_a_stale_dashboard(tmp_path: Path) -> None:
    assert (
        subprocess.run(
            [sys.executable, str(GENERATOR), "--output-dir", str(tmp_path)],
            capture_output=True,
            timeout=60,
            check=False,
        ).returncode
        == 0
    )
    check = [sys.executable, str(GENERATOR), "--check", "--output-dir", str(tmp_path)]
    assert subprocess.run(check, capture_output=True, timeout=60, check=False).returncode == 0
    dashboard = tmp_path / "crm-overview.json"
    dashboard.write_text(dashboard.read_text(encoding="utf-8").replace("p99", "p98"))
    stale = subprocess.run(check, capture_output=True, text=True, timeout=60, check=False)
    assert stale.returncode == 1
    assert "crm-overview.json" in stale.stderr


def test_dashboard_uses_the_provisioned_datasource(generator: ModuleType) -> None:
    datasources = _load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = datasources["datasources"]
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"

    providers = _load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "crm.yml")
    (provider,) = providers["providers"]
    grafana_volumes = _load_yaml(COMPOSE_FILE)["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana_volumes

    dashboard = json.loads((GRAFANA_DIR / "dashboards" / "crm-overview.json").read_text())
    assert dashboard["title"] == "CRM platform overview"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    exprs: list[str] = []
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
            exprs.append(target["expr"])
    assert exprs == generator.panel_queries()


def _exported_metric_names() -> set[str]:
    """The sample names crm_shared.runtime.metrics and every service's own metrics module expose
    (counters with _total, histograms)."""
    from prometheus_client.metrics import MetricWrapperBase

    from broadcast_service import metrics as broadcast_metrics
    from crm_shared.runtime import metrics
    from gateway_service import metrics as gateway_metrics
    from interaction_service import metrics as interaction_metrics
    from profile_service import metrics as profile_metrics
    from recommendation_service import metrics as recommendation_metrics

    suffixes = {
        "counter": ["_total"],
        "gauge": [""],
        "histogram": ["_bucket", "_sum", "_count"],
    }
    names: set[str] = set()
    modules = (
        metrics,
        profile_metrics,
        interaction_metrics,
        broadcast_metrics,
        recommendation_metrics,
        gateway_metrics,
    )
    for value in [v for module in modules for v in vars(module).values()]:
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_panel_queries_use_real_metric_names(generator: ModuleType) -> None:
    exported = _exported_metric_names()
    assert "crm_events_applied_total" in exported
    required = {
        "crm_events_applied_total",
        "crm_events_dead_lettered_total",
        "crm_events_duplicate_total",
        "crm_projection_freshness_seconds_bucket",
        "crm_consumer_lag",
        "crm_batch_duration_seconds_bucket",
        "crm_http_requests_total",
        "crm_http_request_duration_seconds_bucket",
        "crm_projection_halted",
        "crm_outbox_backlog",
        "crm_outbox_oldest_age_seconds",
        "crm_outbox_published_total",
        "crm_clock_timestamp_seconds",
        "crm_clock_last_tick_timestamp_seconds",
    }
    used: set[str] = set()
    for expr in generator.panel_queries():
        used.update(re.findall(r"\bcrm_[a-z0-9_]+", expr))
    assert required <= used
    assert used <= exported, f"unknown metrics: {sorted(used - exported)}"
    for expr in generator.prometheus_queries():
        assert "$" not in expr, f"unresolved Grafana variable in {expr!r}"


# ----------------------------------------------------------------------------- real Prometheus


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on a free loopback port, scraping nothing."""
    config = "global:\n  scrape_interval: 15s\nscrape_configs: []\n"
    with running_prometheus(config, tmp_path_factory.mktemp("prometheus")) as url:
        yield url


@pytest.mark.integration
def test_panel_queries_are_valid_promql(prometheus_url: str, generator: ModuleType) -> None:
    # The check is meaningful: a broken expression is reported as an error.
    status, body = query(prometheus_url, "sum by (projection (rate(crm_events_applied_total[1m]))")
    assert body.get("status") == "error" and body.get("errorType") == "bad_data", (status, body)

    queries = generator.prometheus_queries()
    assert queries
    failures = []
    for expr in queries:
        status, body = query(prometheus_url, expr)
        if body.get("status") != "success":
            failures.append(f"{expr}\n  -> HTTP {status}: {body.get('error', body)}")
    assert not failures, "invalid PromQL in the dashboards:\n" + "\n".join(failures)


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def test_alert_rules_cover_the_engine_and_use_real_metric_names() -> None:
    promtool = require("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for config in (PROMETHEUS_LOCAL, PROMETHEUS_DOCKER):
        assert _load_yaml(config)["rule_files"] == ["alerts.yml"], config
    exported = _exported_metric_names()
    used: set[str] = set()
    for rule in _alert_rules():
        used.update(re.findall(r"\bcrm_[a-z0-9_]+", rule["expr"]))
        assert rule["annotations"]["summary"], rule["alert"]
    assert used <= exported, f"unknown metrics: {sorted(used - exported)}"
    for metric in (
        "crm_projection_halted",
        "crm_outbox_oldest_age_seconds",
        "crm_clock_timestamp_seconds",
        "crm_clock_last_tick_timestamp_seconds",
        "crm_periodic_job_consecutive_failures",
    ):
        assert metric in used, f"no alert watches {metric}"


@pytest.mark.integration
def test_alert_expressions_are_valid_promql(prometheus_url: str) -> None:
    failures = []
    for rule in _alert_rules():
        status, body = query(prometheus_url, rule["expr"])
        if body.get("status") != "success":
            failures.append(f"{rule['alert']}: HTTP {status}: {body.get('error', body)}")
    assert not failures, "\n".join(failures)


def test_alert_rules_fire_when_their_unit_tests_say() -> None:
    """`promtool test rules`: e.g. a periodic job failing for 15 minutes alerts, one that
    recovered meanwhile does not."""
    promtool = require("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS.name],
        cwd=ALERT_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
