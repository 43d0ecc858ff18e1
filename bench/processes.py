"""CPU time of the platform's processes, read from /proc: what a benchmark's work cost each of
them (a worker, Kafka, PostgreSQL with all its backends). Steadier than rates on a shared
machine, and it says where the time goes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import asyncpg

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _read_stat(path: Path) -> tuple[str, list[str]]:
    """The command name in a /proc stat file and the fields after it (index 0 is the state)."""
    stat = path.read_text()
    return stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()


def _stat(pid: int) -> list[str]:
    return _read_stat(Path(f"/proc/{pid}/stat"))[1]


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process and of the children it has reaped (a closed connection's
    PostgreSQL backend), in clock ticks; 0 when it is gone."""
    try:
        fields = _stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return sum(int(value) for value in fields[11:15])


def process_seconds(pid: int) -> float:
    """CPU seconds one process has used so far (a PostgreSQL backend's, say)."""
    return cpu_ticks(pid) / CLOCK_TICKS


def tree_seconds(pid: int) -> float:
    """CPU seconds a process and all its descendants have used so far (a PostgreSQL server)."""
    return cpu_seconds({"tree": pid})["tree"]


async def postmaster_pid(pool: asyncpg.Pool) -> int:
    """The pid of the server's postmaster: the parent of this connection's backend."""
    backend = await pool.fetchval("SELECT pg_backend_pid()")
    return int(_stat(backend)[1])


JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")
"""A JVM's JIT compiler threads, as /proc names them (cut to 15 characters)."""
JIT = "kafka JIT"
"""The broker's JIT compiling its hot paths: most of its CPU in its first minutes, fading once
it has run a while, so it is told apart from the broker's work for the events."""


def jit_ticks(pid: int) -> int:
    """CPU of a JVM's live JIT compiler threads, in clock ticks (0 for any other process)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name, fields = _read_stat(task / "stat")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if name in JIT_THREADS:
            total += int(fields[11]) + int(fields[12])
    return total


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_read_stat(entry / "stat")[1][1])
            except (FileNotFoundError, ProcessLookupError):
                continue
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def cpu_seconds(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds each named process has used so far, its descendants included (uvicorn's
    workers, PostgreSQL's backends)."""
    tree = _children()

    def total(pid: int) -> int:
        return cpu_ticks(pid) + sum(total(child) for child in tree.get(pid, []))

    return {name: total(pid) / CLOCK_TICKS for name, pid in roots.items()}


def infrastructure(env: Mapping[str, str]) -> dict[str, int]:
    """The pids of this checkout's PostgreSQL postmaster and Kafka broker (deploy/local/infra.sh
    writes where they are)."""
    postmaster = Path(env["CRM_PG_DIR"]) / "pg" / "postmaster.pid"
    kafka = Path(env["CRM_STATE_DIR"]) / "kafka" / "kafka.pid"
    return {
        "postgres": int(postmaster.read_text().split()[0]),
        "kafka": int(kafka.read_text().split()[0]),
    }


class CpuMeter:
    """CPU seconds of named processes (and of this one) between `start` and `stop`; the Kafka
    broker's JIT apart from the rest of it (JIT)."""

    def __init__(self, roots: Mapping[str, int]) -> None:
        self.roots = dict(roots)
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        found = {**cpu_seconds(self.roots), "bench": _own_seconds()}
        if "kafka" in self.roots:
            found[JIT] = jit_ticks(self.roots["kafka"]) / CLOCK_TICKS
            found["kafka"] -= found[JIT]
        return found

    def start(self) -> None:
        self._before = self._now()

    def stop(self) -> dict[str, float]:
        after = self._now()
        return {name: after[name] - self._before[name] for name in after}


def per_event_line(spent: Mapping[str, float], events: int) -> str:
    """CPU µs per event of each process that spent any, and in all."""
    each = {name: seconds / events * 1e6 for name, seconds in spent.items() if seconds > 0}
    parts = "  ".join(f"{name.removesuffix('-worker')} {us:.0f}" for name, us in each.items())
    return f"CPU µs an event: {parts}  (all {sum(each.values()):.0f})"
