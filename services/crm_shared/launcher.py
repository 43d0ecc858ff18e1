"""Starts and stops the platform's processes on one machine, for `./crm up` and the test suite.

    python -m crm_shared.launcher start|stop|status [--only NAME ...]

Each process runs detached with its log in $CRM_STATE_DIR/logs/NAME.log and its pid in
$CRM_STATE_DIR/pids/NAME.pid; starting what runs, or stopping what does not, changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Process:
    name: str
    module: str
    port_env: str
    default_port: int
    health_path: str

    def port(self, env: Mapping[str, str]) -> int:
        return int(env.get(self.port_env, self.default_port))

    def health_url(self, env: Mapping[str, str]) -> str:
        return f"http://127.0.0.1:{self.port(env)}{self.health_path}"


def _worker(service: str, port: int) -> Process:
    prefix = f"CRM_{service.upper()}_"
    return Process(
        f"{service}-worker",
        f"{service}_service.worker",
        prefix + "WORKER_METRICS_PORT",
        port,
        "/metrics",
    )


def _api(service: str, port: int) -> Process:
    prefix = f"CRM_{service.upper()}_"
    return Process(
        f"{service}-api", f"{service}_service.api", prefix + "API_PORT", port, "/healthz"
    )


PROCESSES: tuple[Process, ...] = (
    _worker("profile", 9101),
    _worker("interaction", 9102),
    _worker("broadcast", 9103),
    _worker("recommendation", 9104),
    _api("profile", 8101),
    _api("interaction", 8102),
    _api("broadcast", 8103),
    _api("recommendation", 8104),
    _api("gateway", 8100),
    Process("clock", "crm_shared.clock", "CRM_CLOCK_WORKER_METRICS_PORT", 9105, "/metrics"),
)
BY_NAME = {process.name: process for process in PROCESSES}


def state_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("CRM_STATE_DIR", REPO_ROOT / ".run"))


def _pid_file(process: Process, env: Mapping[str, str]) -> Path:
    return state_dir(env) / "pids" / f"{process.name}.pid"


def running_pid(process: Process, env: Mapping[str, str]) -> int | None:
    """The pid of the live process started for this name, if any (stale pid files are removed)."""
    path = _pid_file(process, env)
    try:
        pid = int(path.read_text())
        _reap(pid)
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        path.unlink(missing_ok=True)
        return None
    return pid


def start(process: Process, env: Mapping[str, str]) -> int:
    """Start one process detached (its own session) unless it already runs; return its pid."""
    pid = running_pid(process, env)
    if pid is not None:
        return pid
    logs = state_dir(env) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _pid_file(process, env).parent.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{process.name}.log", "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", process.module],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO_ROOT,
        )
    _pid_file(process, env).write_text(str(child.pid))
    return child.pid


def wait_healthy(processes: Iterable[Process], env: Mapping[str, str], timeout: float = 90) -> None:
    """Wait until every process answers on its health URL; fail with the log tail if one dies."""
    pending = list(processes)
    deadline = time.monotonic() + timeout
    while pending:
        process = pending[0]
        if running_pid(process, env) is None:
            raise RuntimeError(f"{process.name} exited during start-up:\n{log_tail(process, env)}")
        try:
            with urllib.request.urlopen(process.health_url(env), timeout=2) as response:
                if response.status == 200:
                    pending.pop(0)
                    continue
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{process.name} not healthy after {timeout:.0f} s:\n{log_tail(process, env)}"
            )
        time.sleep(0.3)


def stop(
    process: Process, env: Mapping[str, str], *, kill: bool = False, timeout: float = 30
) -> bool:
    """SIGTERM (or SIGKILL) the process and wait for it to go; True if it was running."""
    pid = running_pid(process, env)
    if pid is None:
        return False
    os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        _reap(pid)
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
        _reap(pid)
    _pid_file(process, env).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child, so no zombie looks alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def log_tail(process: Process, env: Mapping[str, str], lines: int = 30) -> str:
    path = state_dir(env) / "logs" / f"{process.name}.log"
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--only", nargs="*", choices=sorted(BY_NAME), help="a subset of processes")
    args = parser.parse_args()
    env = dict(os.environ)
    chosen = [BY_NAME[name] for name in args.only] if args.only else list(PROCESSES)
    if args.action == "start":
        for process in chosen:
            print(
                f"starting {process.name} (pid {start(process, env)}, :{process.port(env)})",
                flush=True,
            )
        wait_healthy(chosen, env)
        print(f"{len(chosen)} processes healthy", flush=True)
    elif args.action == "stop":
        for process in reversed(chosen):
            if stop(process, env):
                print(f"stopped {process.name}", flush=True)
    else:
        for process in chosen:
            pid = running_pid(process, env)
            print(f"{process.name:24} {'running pid ' + str(pid) if pid else 'stopped'}")


if __name__ == "__main__":
    main()
