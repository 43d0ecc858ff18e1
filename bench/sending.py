"""Sending to a local SMTP server: how many messages a second the senders get through.

    ./crm bench-send [--messages 20000] [--senders 2] [--connections 128] [--profile FILE]

Fills a scratch broadcast database with customers who chose e-mail and consent to marketing,
plans one marketing e-mail (plain text and HTML, with the one-click unsubscribe link) to each,
and runs the real sender (claim with the re-check, send, record with the outcome events in the
outbox) until nothing is due, in `--senders` processes of their own that share the work as
deployed senders do (each with `--connections` SMTP connections; the defaults, 2 x 128, are
the set-up that meets the 2,000 e-mails/s target on two cores: one sender is one core, and
more connections add little, docs/performance.md), against Postfix's
`smtp-sink` on loopback: a C server made for this (it accepts everything, offers PIPELINING
and counts the messages whose DATA completed), so the figures are the sender's and not a
Python server's (`./crm` installs it; see docs/decisions.md). The bench fails unless the
server counted every message sent.
Prints progress every second, then messages/s, the CPU time per message of the senders, of
the SMTP server and of PostgreSQL (on a shared 2-core machine the CPU figures are the ones to
compare), and each sender's claims and group commits (count, wall time: the stages a send
waits for). `--profile FILE` runs each sender under cProfile (CPU time, not wall time), writes
the stats to FILE (FILE.N with several) and prints the functions that cost it most.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import uvloop

from bench.processes import postmaster_pid, tree_seconds
from bench.scratch import drop_database, fresh_pool
from broadcast_service import store
from broadcast_service.campaigns import PlannedMessage
from broadcast_service.config import MIGRATIONS, SenderSettings
from broadcast_service.delivery import OutboundMessage
from broadcast_service.projection import ChannelPreferences, ChannelSetup, Consent
from broadcast_service.sender import Attempt, Sender, build_adapters
from crm_shared.runtime import memory
from crm_shared.runtime.db import open_pool

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


@dataclass
class Stage:
    """A stage of the sender a send waits for (its claims, its group commits): how many, their
    wall time."""

    count: int = 0
    seconds: float = 0.0


@dataclass
class Commits(Stage):
    """The group commits, and what they carried."""

    starts: int = 0
    records: int = 0


def time_commits(sender: Sender) -> Commits:
    """Wrap the sender's ledger commit to time it (the stage a send waits for)."""
    commits = Commits()
    commit = sender.ledger.commit

    async def timed(starts: list[str], finished: list[Attempt]) -> set[str]:
        at = time.perf_counter()
        try:
            return await commit(starts, finished)
        finally:
            commits.count += 1
            commits.seconds += time.perf_counter() - at
            commits.starts += len(starts)
            commits.records += len(finished)

    sender.ledger.commit = timed
    return commits


def time_claims(sender: Sender) -> Stage:
    """Wrap the sender's claim to time it (they overlap the sends)."""
    claims = Stage()
    claim = sender.claim

    async def timed() -> list[OutboundMessage]:
        at = time.perf_counter()
        try:
            return await claim()
        finally:
            claims.count += 1
            claims.seconds += time.perf_counter() - at

    sender.claim = timed  # type: ignore[method-assign]
    return claims


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


async def sender_process(profile: str | None) -> None:
    """One sender of the bench, in a process of its own (`--sender-only`): set up, say `ready`,
    wait for `go` on stdin, send until nothing is due, print its figures as one JSON line, and
    close once told `done`."""
    settings = SenderSettings()
    pool = await open_pool(
        f"{settings.platform.pg_dsn_base}/{DATABASE}",
        MIGRATIONS,
        settings.pool_size,
        reset_sessions=False,  # as the sender's own pool
    )
    adapters = build_adapters(settings)
    sender = Sender(pool, adapters, settings)
    commits, claims = time_commits(sender), time_claims(sender)
    try:
        memory.freeze_startup_objects()  # as the sender does once set up
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        profiler = cProfile.Profile(time.process_time) if profile else None
        own = resource.getrusage(resource.RUSAGE_SELF)
        if profiler:
            profiler.enable()
        await sender.send_due()
        if profiler:
            profiler.disable()
        after = resource.getrusage(resource.RUSAGE_SELF)
        if profiler and profile:
            profiler.dump_stats(profile)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
        figures = {
            "user": after.ru_utime - own.ru_utime,
            "system": after.ru_stime - own.ru_stime,
            "claims": claims.count,
            "claim_seconds": claims.seconds,
            **asdict(commits),
        }
        print(json.dumps(figures), flush=True)
        # Connected until the bench has read PostgreSQL's CPU: a backend that exits meanwhile
        # is counted neither among the running nor, until reaped, in its parent's.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    finally:
        for adapter in {id(a): a for a in adapters.values()}.values():
            await adapter.close()
        await pool.close()


async def run(
    counter: IO[bytes], messages: int, connections: int, senders: int, profile: str | None
) -> None:
    """The bench, with smtp-sink's counters written to `counter`."""
    os.environ.setdefault("CRM_LINK_SECRET", secrets.token_hex(32))
    os.environ["CRM_BROADCAST_SMTP_PORT"] = str(SMTP_PORT)
    os.environ["CRM_BROADCAST_SMTP_CONNECTIONS"] = str(connections)
    settings = SenderSettings()
    server = start_smtp_sink(SMTP_PORT, counter)
    print(f"[bench-send] planning {messages:,} e-mails", flush=True)
    pool = await fill(settings, messages)
    children: list[asyncio.subprocess.Process] = []
    try:
        for number in range(senders):
            own_profile = [f"{profile}.{number}" if senders > 1 else profile] if profile else []
            children.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.sending",
                    "--sender-only",
                    *(["--profile", *own_profile] if own_profile else []),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        for child in children:
            assert child.stdout is not None
            if (await child.stdout.readline()).strip() != b"ready":
                sys.exit("[bench-send] a sender did not start")

        async def progress() -> None:
            while True:
                await asyncio.sleep(1)
                print(f"[bench-send] {received(counter):,} / {messages:,} received", flush=True)

        postmaster = await postmaster_pid(pool)
        server_cpu = cpu_of(server.pid)
        postgres_cpu = tree_seconds(postmaster)
        reporter = asyncio.create_task(progress())
        started = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        outputs = [await child.stdout.readline() for child in children if child.stdout]
        elapsed = time.perf_counter() - started
        reporter.cancel()
        server_cpu = cpu_of(server.pid) - server_cpu
        postgres_cpu = tree_seconds(postmaster) - postgres_cpu
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"done\n")
            await child.stdin.drain()
        codes = [await child.wait() for child in children]
        if any(codes) or not all(outputs):
            sys.exit("[bench-send] a sender failed")
        figures = [json.loads(line) for line in outputs]
        async with pool.acquire() as conn:
            sent = await conn.fetchval("SELECT count(*) FROM outbound_messages WHERE state='sent'")
            events = await conn.fetchval("SELECT count(*) FROM outbox")
        arrived = received(counter)
        user = sum(f["user"] for f in figures)
        system = sum(f["system"] for f in figures)
        print(
            f"[bench-send] {sent:,} sent ({arrived:,} received, {events:,} outcome events"
            f" in the outbox) in {elapsed:.1f} s: {sent / elapsed:,.0f} messages/s;"
            f" CPU per message: {_senders(senders)} {(user + system) / sent * 1e6:.0f} µs"
            f" (user {user / sent * 1e6:.0f}, system {system / sent * 1e6:.0f}),"
            f" SMTP server {server_cpu / sent * 1e6:.0f} µs,"
            f" PostgreSQL {postgres_cpu / sent * 1e6:.0f} µs"
            f" ({connections} connections a sender)",
            flush=True,
        )
        for number, f in enumerate(figures):
            print(
                f"[bench-send] sender {number}: {f['claims']:,} claims, {f['claim_seconds']:.1f} s"
                f" in them; {f['count']:,} group commits, {f['seconds']:.1f} s in them,"
                f" {f['starts'] / max(f['count'], 1):.1f} start marks and"
                f" {f['records'] / max(f['count'], 1):.1f} records a commit;"
                f" CPU {f['user'] + f['system']:.1f} s",
                flush=True,
            )
        if arrived != sent:
            sys.exit(f"[bench-send] the SMTP server counted {arrived:,} messages, not {sent:,}")
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
        await pool.close()
        server.terminate()
        server.wait()
        await drop_database(settings.platform.pg_dsn_base, DATABASE)


def _senders(senders: int) -> str:
    return "sender" if senders == 1 else f"{senders} senders"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument(
        "--connections",
        type=int,
        default=128,
        help="CRM_BROADCAST_SMTP_CONNECTIONS of each sender (default 128)",
    )
    parser.add_argument(
        "--senders",
        type=int,
        default=2,
        help="sender processes (default 2: with 128 connections each, the set-up that meets the"
        " 2,000 e-mails/s target)",
    )
    parser.add_argument("--profile", metavar="FILE", help="run the senders under cProfile")
    parser.add_argument("--sender-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not os.environ.get("CRM_PG_DSN_BASE"):
        sys.exit("set CRM_PG_DSN_BASE (./crm bench-send does)")
    if args.sender_only:
        uvloop.run(sender_process(args.profile))
        return
    with tempfile.TemporaryFile() as counter:
        uvloop.run(run(counter, args.messages, args.connections, args.senders, args.profile))


if __name__ == "__main__":
    main()
