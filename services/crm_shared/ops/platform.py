"""The platform: which composition roots make it up. Everything that starts, tests or measures
the platform reads its processes and projections from here."""

from __future__ import annotations

import importlib

from crm_shared.runtime.service import Process, Service

ROOTS = (
    "profile_service.service",
    "interaction_service.service",
    "broadcast_service.service",
    "recommendation_service.service",
    "gateway_service.service",
    "crm_shared.runtime.clock",
)


def services() -> tuple[Service, ...]:
    found: list[Service] = [importlib.import_module(root).SERVICE for root in ROOTS]
    return tuple(found)


def processes() -> tuple[Process, ...]:
    """Every process, workers first (they create the databases the APIs read)."""
    every = [process for service in services() for process in service.processes]
    return tuple(sorted(every, key=lambda process: process.component != "worker"))


def projections() -> tuple[Service, ...]:
    """The services that fold a projection."""
    return tuple(service for service in services() if service.projection is not None)
