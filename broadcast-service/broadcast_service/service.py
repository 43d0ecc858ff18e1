"""The broadcast service's composition root: its processes, settings and projection, as the
launcher, the test fixtures and the benchmarks see them."""

from broadcast_service.config import BroadcastSettings
from crm_shared.runtime.service import Service, api_process, worker_process

SERVICE = Service(
    "broadcast",
    BroadcastSettings,
    (worker_process("broadcast", BroadcastSettings), api_process("broadcast", BroadcastSettings)),
    projection="broadcast_service.worker:PROJECTION",
)
