"""Small tools for integration tests: unique ids, waiting, reading topics and databases."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import httpx
from kafka import KafkaConsumer, TopicPartition

from crm_shared.ops import launcher
from crm_shared.runtime.service import Process

T = TypeVar("T")


def unique(prefix: str) -> str:
    """Ids unique to one test run, so tests sharing the broker never see each other's customers."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    *,
    within: float = 60,
    what: str = "",
) -> T:
    """Poll until check(probe()) holds; fail with the last value seen."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
            if check(last):
                return last
        except (httpx.HTTPError, OSError, asyncpg.PostgresError) as error:
            last = error
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what or 'condition'}; last seen: {last!r}")


def service_auth(platform: dict[str, str]) -> dict[str, str]:
    """The headers a service API asks of its callers in the platform under test."""
    return {"Authorization": f"Bearer {platform['CRM_SERVICE_TOKEN']}"}


async def get_json(url: str, **kwargs: Any) -> tuple[int, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url, **kwargs)
        return response.status_code, response.json()


def run_module(
    env: dict[str, str], module: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """An operator's command (`python -m module args`), run as they would run it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def create_api_key(env: dict[str, str], name: str, scopes: str, sources: str = "") -> str:
    """A new gateway API key, made the way an operator makes one (the keys command)."""
    result = run_module(
        env,
        "gateway_service.keys",
        "create",
        "--name",
        name,
        "--scopes",
        scopes,
        "--sources",
        sources,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def gateway_url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['CRM_GATEWAY_API_PORT']}"


def read_topic(bootstrap: str, topic: str, *, within: float = 60) -> list[Any]:
    """Every record on a topic when called, from the beginning (no consumer group). It stops at
    the end offsets it read first, so it ends even while the clock keeps ticking."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + within
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end within {within} s")
            for tp, batch in consumer.poll(timeout_ms=1000).items():
                records.extend(record for record in batch if record.offset < end[tp])
        return records
    finally:
        consumer.close()


async def experience_events(bootstrap: str, customer: str, event_type: str) -> list[dict[str, Any]]:
    """The customer's events of one type on crm.experience, in log order."""
    records = await asyncio.to_thread(read_topic, bootstrap, "crm.experience")
    found = [json.loads(record.value) for record in records]
    return [e for e in found if e["subject"] == customer and e["type"] == event_type]


async def metric_value(port: str, sample: str) -> float | None:
    """One sample's value (name with its labels, as exposed) on a process's /metrics; None when
    the process does not expose it."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def execute(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The next offset of every partition of a topic: what has been written so far."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return {tp.partition: end for tp, end in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


async def kill_and_restart(env: dict[str, str], processes: Sequence[Process]) -> None:
    """SIGKILL the processes (and their supervisors), then start them again and wait for them."""
    for process in processes:
        launcher.stop(process, env, kill=True)
    await asyncio.sleep(1)
    for process in processes:
        launcher.start(process, env)
    launcher.wait_healthy(processes, env)


async def drop_and_rebuild(env: dict[str, str], service: str) -> None:
    """Stop a projection's worker (and its jobs process, if any), drop its database and start
    them: the worker replays from offset 0, then the jobs compute again from what it folds."""
    worker = launcher.BY_NAME[f"{service}-worker"]
    jobs = [p for p in launcher.PROCESSES if p.service == service and p.component == "jobs"]
    for process in (worker, *jobs):
        launcher.stop(process, env)
    await fetch(f"{env['CRM_PG_DSN_BASE']}/postgres", f"DROP DATABASE crm_{service} WITH (FORCE)")
    launcher.start(worker, env)
    launcher.wait_healthy([worker], env)
    for process in jobs:
        launcher.start(process, env)
    launcher.wait_healthy(jobs, env)
