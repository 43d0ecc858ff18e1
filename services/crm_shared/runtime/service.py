"""What a service is made of, as its composition root (`<name>_service/service.py`) declares it:
its settings, its processes and, for a projection, where its worker's Projection is built.

The launcher, the test fixtures, the deploy checks and the benchmarks read these roots (listed in
crm_shared.ops.platform); none keeps a table of names, modules or ports of its own. A process's
port setting and default come from its settings class, so they cannot drift apart.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from crm_shared.runtime.config import ServiceSettings

if TYPE_CHECKING:
    from crm_shared.runtime.projector import Projection


@dataclass(frozen=True)
class Process:
    """One long-running process: `python -m module`, answering on the port its settings give."""

    name: str
    module: str
    settings: type[ServiceSettings]
    port_field: Literal[
        "api_port", "worker_metrics_port", "sender_metrics_port", "jobs_metrics_port"
    ]
    health_path: str
    service: str
    component: Literal["worker", "api", "sender", "jobs"]

    @property
    def port_env(self) -> str:
        """The environment variable that sets the port (the settings' prefix and field)."""
        return f"{self.settings.model_config.get('env_prefix', '')}{self.port_field.upper()}"

    @property
    def default_port(self) -> int:
        return int(self.settings.model_fields[self.port_field].default)

    def port(self, env: Mapping[str, str]) -> int:
        return int(env.get(self.port_env, self.default_port))

    def health_url(self, env: Mapping[str, str]) -> str:
        return f"http://127.0.0.1:{self.port(env)}{self.health_path}"


def worker_process(service: str, settings: type[ServiceSettings]) -> Process:
    """A projection worker: its metrics and /healthz on the worker metrics port."""
    return Process(
        f"{service}-worker",
        f"{service}_service.worker",
        settings,
        "worker_metrics_port",
        "/metrics",
        service,
        "worker",
    )


def jobs_process(service: str, settings: type[ServiceSettings]) -> Process:
    """A projection's periodic jobs in a process of their own (crm_shared.runtime.jobs): their
    metrics and /healthz on the jobs metrics port."""
    return Process(
        f"{service}-jobs",
        f"{service}_service.jobs",
        settings,
        "jobs_metrics_port",
        "/metrics",
        service,
        "jobs",
    )


def api_process(service: str, settings: type[ServiceSettings]) -> Process:
    return Process(
        f"{service}-api",
        f"{service}_service.api",
        settings,
        "api_port",
        "/healthz",
        service,
        "api",
    )


@dataclass(frozen=True)
class Service:
    """A service's composition root."""

    name: str
    settings: type[ServiceSettings]
    processes: tuple[Process, ...]
    projection: str | None = None
    """'module:attribute' of the worker's Projection, imported only when asked for (the worker
    brings faust along, which the launcher and the APIs do without)."""

    def load_projection(self) -> Projection:
        if self.projection is None:
            raise LookupError(f"{self.name} folds no projection")
        module, _, attribute = self.projection.partition(":")
        projection: Projection = getattr(importlib.import_module(module), attribute)
        return projection
