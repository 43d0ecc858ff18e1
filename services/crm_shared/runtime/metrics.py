"""The platform's Prometheus metrics, shared so that every worker and API exports the same names."""

from __future__ import annotations

import collections
import gc
import os
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

EVENTS_CONSUMED = Counter(
    "crm_events_consumed", "Records read from Kafka by a projection worker", ["projection", "type"]
)
EVENTS_APPLIED = Counter(
    "crm_events_applied", "Events folded into a projection", ["projection", "type"]
)
EVENTS_DUPLICATE = Counter(
    "crm_events_duplicate",
    "Events already applied (re-delivered or published twice) and therefore ignored",
    ["projection", "type"],
)
EVENTS_IGNORED = Counter(
    "crm_events_ignored",
    "Valid events of a type this projection does not fold",
    ["projection", "type"],
)
EVENTS_DEAD_LETTERED = Counter(
    "crm_events_dead_lettered",
    "Records sent to the dead-letter topic, by event type ('unknown' when undecodable)",
    ["projection", "type"],
)
BATCH_SIZE = Histogram(
    "crm_batch_size",
    "Records per consumed batch",
    ["projection"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
)
BATCH_DURATION = Histogram(
    "crm_batch_duration_seconds",
    "Time to decode, fold and commit one batch",
    ["projection"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_RETRIES = Counter(
    "crm_batch_retries", "Batches retried after a transient failure", ["projection"]
)
APPLIED_EVENTS_PRUNED = Counter(
    "crm_applied_events_pruned",
    "Applied event ids forgotten because they left the deduplication window",
    ["projection"],
)
FRESHNESS = Histogram(
    "crm_projection_freshness_seconds",
    "Commit time minus event time, per applied event",
    ["projection"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
LAST_EVENT_TIME = Gauge(
    "crm_projection_last_event_timestamp_seconds",
    "Event time of the newest event applied; freshness now is time() minus this",
    ["projection"],
)
CONSUMER_LAG = Gauge(
    "crm_consumer_lag",
    "Records on a partition not yet applied (high-water mark minus next offset)",
    ["projection", "topic", "partition"],
)
OUTBOX_BACKLOG = Gauge(
    "crm_outbox_backlog", "Derived events written but not yet acknowledged by Kafka", ["projection"]
)
OUTBOX_OLDEST_AGE = Gauge(
    "crm_outbox_oldest_age_seconds",
    "Age of the oldest derived event not yet acknowledged by Kafka (0 when none waits)",
    ["projection"],
)
OUTBOX_PUBLISHED = Counter(
    "crm_outbox_published", "Derived events relayed to Kafka", ["projection", "type"]
)
HALTED = Gauge(
    "crm_projection_halted",
    "1 while a worker has stopped consuming because folding fails for reasons that are not "
    "the events' fault (see its /healthz and log)",
    ["projection"],
)
CLOCK_TIME = Gauge(
    "crm_clock_timestamp_seconds",
    "Time of the newest clock tick a projection read; clock lag is time() minus this",
    ["projection"],
)
CLOCK_TICKS_PUBLISHED = Counter(
    "crm_clock_ticks_published", "Tick records the clock published", ["topic"]
)
CLOCK_LAST_TICK = Gauge(
    "crm_clock_last_tick_timestamp_seconds", "Time of the newest tick the clock published"
)
PERIODIC_JOB_CONSECUTIVE_FAILURES = Gauge(
    "crm_periodic_job_consecutive_failures",
    "Runs of a worker's periodic job that failed in a row (0 after a success); the job backs "
    "off exponentially meanwhile",
    ["projection", "periodic_job"],
)
FROZEN_OBJECTS = Gauge(
    "crm_gc_frozen_objects",
    "Objects this process moved out of the cyclic garbage collector's reach once set up "
    "(crm_shared.runtime.memory.freeze_startup_objects; 0: it did not, and every full "
    "collection walks its start-up objects); of an API served by several processes, the "
    "fewest of any of them",
    multiprocess_mode="livemin",
)
# A process's own /metrics reads the count live; processes sharing their metrics
# (`shared_between_processes`) read what `freeze_startup_objects` set.
FROZEN_OBJECTS.set_function(gc.get_freeze_count)
HTTP_REQUESTS = Counter(
    "crm_http_requests", "HTTP requests served", ["service", "route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "crm_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`histogram.observe(amount)` for each amount, at one lock and bucket increment per bucket
    touched instead of two per amount (a batch's freshness costs about 2 µs an event otherwise).

    prometheus_client has no public bulk observe, so this writes the child's bucket and sum
    values as `observe` does; tests/unit/test_metrics_bulk.py fails if that stops being so."""
    bounds: Sequence[float] = histogram._upper_bounds
    per_bucket = collections.Counter(bisect_left(bounds, amount) for amount in amounts)
    for index, count in per_bucket.items():
        histogram._buckets[index].inc(count)
    histogram._sum.inc(sum(amounts))


_held: ContextVar[list[tuple[Counter, float]] | None] = ContextVar("crm_held_counts", default=None)


def count(counter: Counter, amount: float = 1) -> None:
    """`counter.inc(amount)` for work of the transaction under way: inside `counted_on_commit`
    it waits until that block ends without raising (a batch folded again after a failure or a
    serialization retry counts once); elsewhere it counts at once."""
    held = _held.get()
    if held is None:
        counter.inc(amount)
    else:
        held.append((counter, amount))


@contextmanager
def counted_on_commit() -> Iterator[None]:
    """Hold the `count`s made in this block (around a transaction) until it ends; drop them when
    it raises. Nested in another (a savepoint), its counts join the outer block's."""
    held: list[tuple[Counter, float]] = []
    outer = _held.get()
    token = _held.set(held)
    try:
        yield
    finally:
        _held.reset(token)
    if outer is not None:
        outer.extend(held)
        return
    for counter, amount in held:
        counter.inc(amount)


SHARED_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""Set, prometheus_client keeps every metric of the processes started with it in files there,
one a process, which `exposition` adds up (its multiprocess mode)."""


@contextmanager
def shared_between_processes(name: str) -> Iterator[str]:
    """A fresh directory for the metrics of the processes started within, set as
    SHARED_DIRECTORY_VARIABLE for them (the caller's own metrics are not in it), and removed
    after: several processes serving one port then answer /metrics for all of them. Its name
    carries this process's id, so that the directories of one killed before it could remove
    them (SIGKILL) are removed by the next start."""
    _remove_orphaned_directories(name)
    directory = tempfile.mkdtemp(prefix=f"{_directory_prefix(name)}{os.getpid()}-")
    os.environ[SHARED_DIRECTORY_VARIABLE] = directory
    try:
        yield directory
    finally:
        os.environ.pop(SHARED_DIRECTORY_VARIABLE, None)
        shutil.rmtree(directory, ignore_errors=True)


def _directory_prefix(name: str) -> str:
    return f"crm-{name}-metrics-"


def _remove_orphaned_directories(name: str) -> None:
    """Remove the shared metrics directories of `name` whose owner no longer runs."""
    prefix = _directory_prefix(name)
    root = tempfile.gettempdir()
    for entry in os.listdir(root):
        owner = entry.removeprefix(prefix).split("-", 1)[0]
        if entry.startswith(prefix) and owner.isdigit() and not _running(int(owner)):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def exposition() -> bytes:
    """The metrics in Prometheus's text format: this process's, or, in a process started within
    `shared_between_processes`, those of all its sibling processes added up (counters and
    histograms summed, gauges by their multiprocess mode). The multiprocess mode leaves out the
    client's own process and platform collectors."""
    if SHARED_DIRECTORY_VARIABLE not in os.environ:
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def process_stopped() -> None:
    """Forget this process's live gauges among its siblings' (a clean stop; one killed leaves
    its last values, which its replacement's soon match)."""
    if SHARED_DIRECTORY_VARIABLE in os.environ:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
