"""The private parts of faust the batch consumer relies on: these fail when a faust upgrade
changes them, before a worker silently stops reading (see runtime/worker.py BatchConsumer)."""

from __future__ import annotations

import inspect
from typing import cast

import faust
import mode
from aiokafka import AIOKafkaConsumer
from faust.transport import consumer as faust_consumer
from faust.transport.drivers.aiokafka import Producer

from crm_shared.runtime.projector import BatchProjector
from crm_shared.runtime.worker import (
    FETCH_MAX_WAIT_MS,
    FETCH_MIN_BYTES,
    BatchConsumer,
    BatchConsumerThread,
    BatchTransport,
    BoundedStopWorker,
)


def test_the_fetcher_still_runs_the_consumers_drain_loop() -> None:
    source = inspect.getsource(faust_consumer.Fetcher)
    assert "consumer._drain_messages(self)" in source
    assert BatchConsumer._drain_messages is not faust_consumer.Consumer._drain_messages


def test_one_fetch_still_waits_for_the_flow_and_returns_records_by_partition() -> None:
    wait_next = faust_consumer.Consumer._wait_next_records
    assert inspect.iscoroutinefunction(wait_next)
    assert list(inspect.signature(wait_next).parameters) == ["self", "timeout"]
    source = inspect.getsource(wait_next)
    assert "can_resume_flow" in source  # paused while a rebalance stops the flow
    assert "return records, active_partitions" in source


async def test_an_app_given_the_batch_transport_reads_with_the_batch_consumer() -> None:
    app = faust.App("contract-test", broker="kafka://127.0.0.1:1", autodiscover=False)

    async def nothing(fetched: object) -> None:
        raise AssertionError("no fetch happens in this test")

    projector = cast(BatchProjector, None)
    app.transport = BatchTransport(app, nothing, projector)
    assert isinstance(app.consumer, BatchConsumer)
    assert app.consumer.transport is app.transport


async def test_the_consumer_thread_builds_an_aiokafka_consumer_asking_for_fuller_fetches() -> None:
    """faust passes neither fetch setting through; the thread sets aiokafka's private copies
    of them on the consumer faust builds, before it starts and hands them to its fetcher."""
    app = faust.App("contract-test", broker="kafka://127.0.0.1:1", autodiscover=False)

    async def nothing(fetched: object) -> None:
        raise AssertionError("no fetch happens in this test")

    app.transport = BatchTransport(app, nothing, cast(BatchProjector, None))
    thread = app.consumer._new_consumer_thread()
    assert isinstance(thread, BatchConsumerThread)
    consumer = thread._create_worker_consumer(app.transport)
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (
        FETCH_MIN_BYTES,
        FETCH_MAX_WAIT_MS,
    )
    given = AIOKafkaConsumer(
        bootstrap_servers="127.0.0.1:1", fetch_min_bytes=7, fetch_max_wait_ms=9
    )
    assert (given._fetch_min_bytes, given._fetch_max_wait_ms) == (7, 9)
    start = inspect.getsource(AIOKafkaConsumer.start)
    assert "fetch_min_bytes=self._fetch_min_bytes" in start
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start


def test_the_consumer_still_commits_offsets_through_its_thread() -> None:
    commit = faust_consumer.ThreadDelegateConsumer._commit
    assert list(inspect.signature(commit).parameters) == ["self", "offsets"]
    assert "self._thread.commit(offsets)" in inspect.getsource(commit)


def test_a_stop_signal_still_goes_through_the_workers_schedule_shutdown() -> None:
    """BoundedStopWorker arms its stop deadline there."""
    on_sigterm = inspect.getsource(mode.Worker._on_sigterm)
    assert "self._schedule_shutdown(signal.SIGTERM)" in on_sigterm
    schedule = mode.Worker._schedule_shutdown
    assert list(inspect.signature(schedule).parameters) == ["self", "signal"]
    assert BoundedStopWorker._schedule_shutdown is not schedule


def test_the_producer_still_sends_topic_key_value_partition_timestamp_headers_in_order() -> None:
    """The outbox relay sends through `app.maybe_start_producer()` with positional arguments."""
    parameters = list(inspect.signature(Producer.send).parameters)
    assert parameters[:7] == ["self", "topic", "key", "value", "partition", "timestamp", "headers"]
