"""The interaction service's composition root: its processes, settings and projection, as the
launcher, the test fixtures and the benchmarks see them."""

from crm_shared.runtime.service import Service, api_process, worker_process
from interaction_service.config import InteractionSettings

SERVICE = Service(
    "interaction",
    InteractionSettings,
    (
        worker_process("interaction", InteractionSettings),
        api_process("interaction", InteractionSettings),
    ),
    projection="interaction_service.worker:PROJECTION",
)
