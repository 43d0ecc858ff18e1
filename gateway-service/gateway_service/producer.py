"""The gateway's one Kafka producer, and how a batch of events is sent and acknowledged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from gateway_service.config import GatewaySettings
from gateway_service.ingest import Publish

log = logging.getLogger(__name__)


class EventProducer:
    """An idempotent acks=all producer, connected at start-up or, if Kafka is down then, on the
    first ingest after it is back: the gateway serves reads while Kafka is away."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._bootstrap = settings.platform.kafka_bootstrap
        self._timeout = settings.publish_timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._connecting = asyncio.Lock()

    async def connect(self) -> str | None:
        """Start the producer if it is not running; None when it runs, else why it does not."""
        async with self._connecting:
            if self._producer is not None:
                return None
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                client_id="crm-gateway",
                acks="all",
                enable_idempotence=True,
                max_request_size=9 * 1024 * 1024,
                request_timeout_ms=int(self._timeout * 1000),
                linger_ms=5,
            )
            try:
                async with asyncio.timeout(self._timeout):
                    await producer.start()
            except (KafkaError, OSError, TimeoutError) as error:
                await producer.stop()
                why = _why(error) if not isinstance(error, TimeoutError) else "no answer"
                log.warning("kafka producer not started", extra={"reason": why})
                return f"cannot reach Kafka at {self._bootstrap} ({why})"
            self._producer = producer
            return None

    async def publish(self, items: Sequence[Publish]) -> dict[int, str]:
        """Send in batch order and wait for the acks; why each unacknowledged event failed."""
        if not items:
            return {}
        not_connected = await self.connect()
        if not_connected is not None:
            return {item.index: not_connected for item in items}
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        failures: dict[int, str] = {}
        acks: dict[int, asyncio.Future[Any]] = {}
        for item in items:
            remaining = deadline - loop.time()
            if remaining <= 0:
                failures[item.index] = f"not sent within {self._timeout:g} s"
                continue
            try:
                # send() only waits for metadata and buffer room; the ack comes on the future.
                async with asyncio.timeout(remaining):
                    acks[item.index] = await self._producer.send(
                        item.topic, item.value, key=item.key
                    )
            except TimeoutError:
                failures[item.index] = f"no broker answered within {self._timeout:g} s"
            except KafkaError as error:
                failures[item.index] = _why(error)
        if acks:
            # asyncio.wait, unlike gather under a timeout, leaves the futures alone when time
            # is up: an event sent late is still delivered, and deduplicated if sent again.
            await asyncio.wait(acks.values(), timeout=max(0.0, deadline - loop.time()))
        for index, ack in acks.items():
            if not ack.done() or ack.cancelled():
                failures[index] = f"no acknowledgement within {self._timeout:g} s"
            elif (problem := ack.exception()) is not None:
                failures[index] = _why(problem)
        return failures

    async def stop(self) -> None:
        """Flush what is buffered and disconnect."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def _why(error: BaseException) -> str:
    return str(error) or type(error).__name__
