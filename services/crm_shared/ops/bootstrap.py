"""Create the platform's topics with explicit partitions and configs; no auto-creation.

    python -m crm_shared.ops.bootstrap [--partitions 12]

Safe to run again: missing topics are created, existing ones get their configs re-applied.
"""

from __future__ import annotations

import argparse
import logging
import time

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, RetriableError

from crm_shared.contracts.topics import ALL_TOPICS, DEFAULT_PARTITIONS
from crm_shared.runtime.config import PlatformSettings
from crm_shared.runtime.logs import configure_logging

log = logging.getLogger("crm.bootstrap")


def connect(bootstrap: str, wait_seconds: float) -> KafkaAdminClient:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-bootstrap")
        except RetriableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def create_topics(
    bootstrap: str, partitions: int = DEFAULT_PARTITIONS, wait_seconds: float = 60
) -> list[str]:
    """Create what is missing, re-apply configs of what exists; return the names created."""
    admin = connect(bootstrap, wait_seconds)
    try:
        existing = set(admin.list_topics())
        missing = [topic for topic in ALL_TOPICS if topic.name not in existing]
        if missing:
            admin.create_topics(
                [
                    NewTopic(
                        topic.name, partitions, replication_factor=1, topic_configs=topic.config
                    )
                    for topic in missing
                ]
            )
        present = [topic for topic in ALL_TOPICS if topic.name in existing]
        if present:
            admin.alter_configs(
                [
                    ConfigResource(ConfigResourceType.TOPIC, t.name, configs=t.config)
                    for t in present
                ]
            )
        for topic in ALL_TOPICS:
            state = "created" if topic in missing else "exists"
            log.info("topic %s", state, extra={"topic": topic.name, "partitions": partitions})
        return [topic.name for topic in missing]
    finally:
        admin.close()


def main() -> None:
    settings = PlatformSettings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default=settings.kafka_bootstrap)
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    args = parser.parse_args()
    configure_logging("bootstrap", settings.log_level)
    try:
        created = create_topics(args.bootstrap, args.partitions)
    except KafkaError as error:
        raise SystemExit(f"topic bootstrap failed: {error!r}") from error
    print(f"topics ready ({len(created)} created, {len(ALL_TOPICS) - len(created)} existed)")


if __name__ == "__main__":
    main()
