"""Sending to a local SMTP server: how many messages a second one sender gets through.

    ./crm bench-send [--messages 20000] [--connections 16] [--profile FILE]

Fills a scratch broadcast database with customers who chose e-mail and consent to marketing,
plans one marketing e-mail (plain text and HTML, with the one-click unsubscribe link) to each,
and runs the real sender (claim with the re-check, send, record with the outcome events in the
outbox) until nothing is due, against an aiosmtpd server in a process of its own on loopback.
Prints progress every second, then messages/s, and the CPU time per message of the sender, of
the SMTP server and of PostgreSQL: on a shared 2-core machine the CPU figures are the ones to
compare. `--profile FILE` runs the sender under cProfile (CPU time, not wall time), writes the
stats to FILE and prints the functions that cost it most.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing
import os
import pstats
import resource
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import uvloop

from bench.rebuild import postgres_cpu_seconds, postmaster_pid
from bench.scratch import drop_database, fresh_pool
from broadcast_service import store
from broadcast_service.campaigns import PlannedMessage
from broadcast_service.config import MIGRATIONS, SenderSettings
from broadcast_service.projection import ChannelPreferences, ChannelSetup, Consent
from broadcast_service.sender import Sender, build_adapters

DATABASE = "crm_broadcast_sendbench"
SMTP_PORT = 25525


def serve_smtp(port: int, received: Synchronized[int], ready: Any) -> None:
    """An SMTP server that accepts everything and counts the messages (its own process)."""
    from aiosmtpd.controller import Controller

    class Count:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with received.get_lock():
                received.value += 1
            return "250 OK"

    controller = Controller(Count(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    while True:
        time.sleep(3600)


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _address(customer_id: str) -> str:
    return f"{customer_id.lower()}@example.com"


async def fill(sender_settings: SenderSettings, messages: int) -> Any:
    base = sender_settings.platform.pg_dsn_base
    pool = await fresh_pool(base, DATABASE, MIGRATIONS, sender_settings.pool_size)
    ids = [f"C{n:07d}" for n in range(messages)]
    long_ago = datetime(2024, 1, 1, tzinfo=UTC)
    async with pool.acquire() as conn, conn.transaction():
        await store.save_preferences(
            conn,
            [
                ChannelPreferences(
                    c, (ChannelSetup("email", _address(c)),), "UTC", long_ago, "bench", c
                )
                for c in ids
            ],
        )
        confirmed = "double_opt_in"
        await store.save_consents(
            conn,
            [Consent(c, "marketing", "*", "granted", long_ago, "bench", c, confirmed) for c in ids],
        )
        due = datetime.now(UTC) - timedelta(seconds=1)
        await store.add_messages(
            conn,
            [
                PlannedMessage(
                    message_id=f"bench.{c}",
                    campaign_id="bench",
                    customer_id=c,
                    channel="email",
                    address=_address(c),
                    purpose="marketing",
                    subject="Our picks for you this week",
                    body_text=f"Hello {c},\n\nthree products we think you will like:\n"
                    "- a tea pot\n- a cake stand\n- a lantern\n",
                    body_html=f"<p>Hello {c},</p><ul><li>a tea pot</li><li>a cake stand</li>"
                    "<li>a lantern</li></ul>",
                    not_before=due,
                )
                for c in ids
            ],
        )
    return pool


async def run(messages: int, connections: int, profile: str | None) -> None:
    os.environ.setdefault("CRM_LINK_SECRET", secrets.token_hex(32))
    os.environ["CRM_BROADCAST_SMTP_PORT"] = str(SMTP_PORT)
    os.environ["CRM_BROADCAST_SMTP_CONNECTIONS"] = str(connections)
    settings = SenderSettings()
    received: Synchronized[int] = multiprocessing.Value("q", 0)
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=serve_smtp, args=(SMTP_PORT, received, ready))
    server.start()
    ready.wait(30)
    print(f"[bench-send] planning {messages:,} e-mails", flush=True)
    pool = await fill(settings, messages)
    adapters = build_adapters(settings)
    sender = Sender(pool, adapters, settings)
    try:

        async def progress() -> None:
            while True:
                await asyncio.sleep(1)
                print(f"[bench-send] {received.value:,} / {messages:,} received", flush=True)

        reporter = asyncio.create_task(progress())
        assert server.pid is not None
        postmaster = await postmaster_pid(pool)
        profiler = cProfile.Profile(time.process_time) if profile else None
        server_cpu, own = cpu_of(server.pid), resource.getrusage(resource.RUSAGE_SELF)
        postgres_cpu = postgres_cpu_seconds(postmaster)
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        while batch := await sender.claim():
            await sender.send_batch(batch)
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - started
        reporter.cancel()
        after = resource.getrusage(resource.RUSAGE_SELF)
        sender_cpu = after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime
        server_cpu = cpu_of(server.pid) - server_cpu
        postgres_cpu = postgres_cpu_seconds(postmaster) - postgres_cpu
        if profiler and profile:
            profiler.dump_stats(profile)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        async with pool.acquire() as conn:
            sent = await conn.fetchval("SELECT count(*) FROM outbound_messages WHERE state='sent'")
            events = await conn.fetchval("SELECT count(*) FROM outbox")
        print(
            f"[bench-send] {sent:,} sent ({received.value:,} received, {events:,} outcome events"
            f" in the outbox) in {elapsed:.1f} s: {sent / elapsed:,.0f} messages/s;"
            f" CPU per message: sender {sender_cpu / sent * 1e6:.0f} µs,"
            f" SMTP server {server_cpu / sent * 1e6:.0f} µs,"
            f" PostgreSQL {postgres_cpu / sent * 1e6:.0f} µs ({connections} connections)",
            flush=True,
        )
    finally:
        for adapter in {id(a): a for a in adapters.values()}.values():
            await adapter.close()
        await pool.close()
        server.terminate()
        await drop_database(settings.platform.pg_dsn_base, DATABASE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--profile", metavar="FILE", help="run the sender under cProfile")
    args = parser.parse_args()
    if not os.environ.get("CRM_PG_DSN_BASE"):
        sys.exit("set CRM_PG_DSN_BASE (./crm bench-send does)")
    uvloop.run(run(args.messages, args.connections, args.profile))


if __name__ == "__main__":
    main()
