"""Sending to a local SMTP server: how many messages a second one sender gets through.

    ./crm bench-send [--messages 20000] [--connections 64] [--profile FILE]

Fills a scratch broadcast database with customers who chose e-mail and consent to marketing,
plans one marketing e-mail (plain text and HTML, with the one-click unsubscribe link) to each,
and runs the real sender (claim with the re-check, send, record with the outcome events in the
outbox) until nothing is due, against Postfix's `smtp-sink` on loopback: a C server made for
this (it accepts everything, offers PIPELINING and counts the messages whose DATA completed),
so the figures are the sender's and not a Python server's (`./crm` installs it; see
docs/decisions.md). The bench fails unless the server counted every message sent.
Prints progress every second, then messages/s, and the CPU time per message of the sender, of
the SMTP server and of PostgreSQL: on a shared 2-core machine the CPU figures are the ones to
compare. `--profile FILE` runs the sender under cProfile (CPU time, not wall time), writes the
stats to FILE and prints the functions that cost it most.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import re
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import uvloop

from bench.rebuild import postgres_cpu_seconds, postmaster_pid
from bench.scratch import drop_database, fresh_pool
from broadcast_service import store
from broadcast_service.campaigns import PlannedMessage
from broadcast_service.config import MIGRATIONS, SenderSettings
from broadcast_service.projection import ChannelPreferences, ChannelSetup, Consent
from broadcast_service.sender import Sender, build_adapters, freeze_startup_objects

DATABASE = "crm_broadcast_sendbench"
SMTP_PORT = 25525


SMTP_SINK = "/usr/sbin/smtp-sink"
_RECEIVED = re.compile(rb"mesg=(\d+)")


def start_smtp_sink(port: int, counter: IO[bytes]) -> subprocess.Popen[bytes]:
    """smtp-sink on loopback, writing its running counters (`-c`) to `counter`."""
    if not os.access(SMTP_SINK, os.X_OK):
        sys.exit(f"{SMTP_SINK} is missing: ./crm installs it (Debian package postfix)")
    as_root = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
    sink = subprocess.Popen(
        [SMTP_SINK, *as_root, "-c", f"127.0.0.1:{port}", "1024"],
        stdout=counter,
        stderr=subprocess.STDOUT,
    )
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return sink
        if sink.poll() is not None:
            sys.exit(f"smtp-sink exited with {sink.returncode}")
        time.sleep(0.05)
    sink.kill()
    sys.exit("smtp-sink did not listen")


def received(counter: IO[bytes]) -> int:
    """The messages smtp-sink received so far: the last `mesg=` of its counters (their tail is
    enough: each update is one short line)."""
    size = counter.seek(0, os.SEEK_END)
    counter.seek(max(0, size - 256))
    found = _RECEIVED.findall(counter.read())
    return int(found[-1]) if found else 0


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _address(customer_id: str) -> str:
    return f"{customer_id.lower()}@example.com"


async def fill(sender_settings: SenderSettings, messages: int) -> Any:
    base = sender_settings.platform.pg_dsn_base
    pool = await fresh_pool(
        base, DATABASE, MIGRATIONS, sender_settings.pool_size, reset_sessions=False
    )  # as the sender's own pool
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


async def run(counter: IO[bytes], messages: int, connections: int, profile: str | None) -> None:
    """The bench, with smtp-sink's counters written to `counter`."""
    os.environ.setdefault("CRM_LINK_SECRET", secrets.token_hex(32))
    os.environ["CRM_BROADCAST_SMTP_PORT"] = str(SMTP_PORT)
    os.environ["CRM_BROADCAST_SMTP_CONNECTIONS"] = str(connections)
    settings = SenderSettings()
    server = start_smtp_sink(SMTP_PORT, counter)
    print(f"[bench-send] planning {messages:,} e-mails", flush=True)
    pool = await fill(settings, messages)
    adapters = build_adapters(settings)
    sender = Sender(pool, adapters, settings)
    try:

        async def progress() -> None:
            while True:
                await asyncio.sleep(1)
                print(f"[bench-send] {received(counter):,} / {messages:,} received", flush=True)

        reporter = asyncio.create_task(progress())
        postmaster = await postmaster_pid(pool)
        profiler = cProfile.Profile(time.process_time) if profile else None
        freeze_startup_objects()  # as the sender does once set up
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
        sender_user, sender_system = after.ru_utime - own.ru_utime, after.ru_stime - own.ru_stime
        sender_cpu = sender_user + sender_system
        server_cpu = cpu_of(server.pid) - server_cpu
        postgres_cpu = postgres_cpu_seconds(postmaster) - postgres_cpu
        if profiler and profile:
            profiler.dump_stats(profile)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        async with pool.acquire() as conn:
            sent = await conn.fetchval("SELECT count(*) FROM outbound_messages WHERE state='sent'")
            events = await conn.fetchval("SELECT count(*) FROM outbox")
        arrived = received(counter)
        print(
            f"[bench-send] {sent:,} sent ({arrived:,} received, {events:,} outcome events"
            f" in the outbox) in {elapsed:.1f} s: {sent / elapsed:,.0f} messages/s;"
            f" CPU per message: sender {sender_cpu / sent * 1e6:.0f} µs"
            f" (user {sender_user / sent * 1e6:.0f}, system {sender_system / sent * 1e6:.0f}),"
            f" SMTP server {server_cpu / sent * 1e6:.0f} µs,"
            f" PostgreSQL {postgres_cpu / sent * 1e6:.0f} µs ({connections} connections)",
            flush=True,
        )
        if arrived != sent:
            sys.exit(f"[bench-send] the SMTP server counted {arrived:,} messages, not {sent:,}")
    finally:
        for adapter in {id(a): a for a in adapters.values()}.values():
            await adapter.close()
        await pool.close()
        server.terminate()
        server.wait()
        await drop_database(settings.platform.pg_dsn_base, DATABASE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument(
        "--connections", type=int, default=64, help="CRM_BROADCAST_SMTP_CONNECTIONS"
    )
    parser.add_argument("--profile", metavar="FILE", help="run the sender under cProfile")
    args = parser.parse_args()
    if not os.environ.get("CRM_PG_DSN_BASE"):
        sys.exit("set CRM_PG_DSN_BASE (./crm bench-send does)")
    with tempfile.TemporaryFile() as counter:
        uvloop.run(run(counter, args.messages, args.connections, args.profile))


if __name__ == "__main__":
    main()
