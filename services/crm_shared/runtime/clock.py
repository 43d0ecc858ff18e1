"""The platform's clock: time as events in the log, so that time rules replay.

    python -m crm_shared.runtime.clock

Every `interval` seconds the clock publishes a tick (`crm.clock.ticked.v1`, subject `clock`)
into every partition of every event topic. A projection that folds ticks sees time arrive in
each partition in the log's own order: after every event published before the tick, before
every event published after it. A rebuild from offset 0 reads the same order, so a rule such as
"no purchase for 30 days" gives the same result, and derives the same events, live and replayed.
A fold never reads the wall clock. Tick ids are the tick time, topic and partition, so two
clocks (a restart, a second replica) publish duplicates that consumers drop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from kafka import KafkaProducer
from prometheus_client import start_http_server
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from crm_shared.contracts.events import CLOCK_SUBJECT, CLOCK_TICKED, build_event, encode_event
from crm_shared.contracts.topics import CLOCK_PRODUCER, EVENT_TOPICS
from crm_shared.runtime import memory
from crm_shared.runtime.config import ServiceSettings
from crm_shared.runtime.logs import configure_logging
from crm_shared.runtime.metrics import CLOCK_LAST_TICK, CLOCK_TICKS_PUBLISHED
from crm_shared.runtime.service import Process, Service

log = logging.getLogger(__name__)


class ClockSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_CLOCK_", extra="ignore")

    interval_seconds: float = Field(default=60, ge=0.5, le=3600, description="Between ticks")
    worker_metrics_port: int = 9105


SERVICE = Service(
    "clock",
    ClockSettings,
    (
        Process(
            "clock",
            "crm_shared.runtime.clock",
            ClockSettings,
            "worker_metrics_port",
            "/metrics",
            "clock",
            "worker",
        ),
    ),
)
"""The clock's composition root."""


def tick_time(now: datetime, interval_seconds: float) -> datetime:
    """The tick boundary at or before `now`: every clock agrees on it."""
    seconds = now.timestamp()
    return datetime.fromtimestamp(seconds - seconds % interval_seconds, UTC)


def tick_records(at: datetime, partitions: Mapping[str, int]) -> list[tuple[str, int, bytes]]:
    """(topic, partition, encoded tick) for every partition of the given topics."""
    stamp = at.strftime("%Y%m%dT%H%M%S.%fZ")
    return [
        (
            topic,
            partition,
            encode_event(
                build_event(
                    CLOCK_TICKED,
                    CLOCK_SUBJECT,
                    {"topic": topic, "partition": partition},
                    source=CLOCK_PRODUCER,
                    time=at,
                    event_id=f"tick:{stamp}:{topic}:{partition}",
                )
            ),
        )
        for topic, count in partitions.items()
        for partition in range(count)
    ]


def run(settings: ClockSettings) -> None:
    """Tick until stopped (SIGTERM/SIGINT end the process between ticks)."""
    producer = KafkaProducer(
        bootstrap_servers=settings.platform.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        client_id="crm-clock",
    )
    partitions = {
        topic.name: len(producer.partitions_for(topic.name) or ()) for topic in EVENT_TOPICS
    }
    log.info("clock started", extra={"interval": settings.interval_seconds, "topics": partitions})
    last: datetime | None = None
    while True:
        at = tick_time(datetime.now(UTC), settings.interval_seconds)
        if at != last:
            for topic, partition, value in tick_records(at, partitions):
                producer.send(topic, value=value, key=CLOCK_SUBJECT.encode(), partition=partition)
            producer.flush()
            for topic, count in partitions.items():
                CLOCK_TICKS_PUBLISHED.labels(topic).inc(count)
            CLOCK_LAST_TICK.set(at.timestamp())
            last = at
        time.sleep(settings.interval_seconds - time.time() % settings.interval_seconds)


def main() -> None:
    settings = ClockSettings()
    configure_logging("clock", settings.platform.log_level)
    start_http_server(settings.worker_metrics_port)
    memory.freeze_startup_objects()
    run(settings)


if __name__ == "__main__":
    main()
