"""The broadcast service's composition root: its processes, settings and projection, as the
launcher, the test fixtures and the benchmarks see them."""

from broadcast_service.config import BroadcastSettings, SenderSettings
from crm_shared.runtime.service import Process, Service, api_process, worker_process

SENDER = Process(
    "broadcast-sender",
    "broadcast_service.sender",
    SenderSettings,
    "sender_metrics_port",
    "/metrics",
    "broadcast",
    "sender",
)
"""Sends what campaigns planned: a process apart from the worker, so sending scales alone."""

SERVICE = Service(
    "broadcast",
    BroadcastSettings,
    (
        worker_process("broadcast", BroadcastSettings),
        api_process("broadcast", BroadcastSettings),
        SENDER,
    ),
    projection="broadcast_service.worker:PROJECTION",
)
