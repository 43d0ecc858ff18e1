"""Starts, supervises and stops the platform's processes on one machine, for `./crm up` and tests.

    python -m crm_shared.ops.launcher start|stop|status [--only NAME ...]
    python -m crm_shared.ops.launcher supervise NAME MODULE     (what `start` runs for each process)

Every process has a supervisor of its own, as with runit or daemontools: `start` runs it
detached, in a session of its own, its pid in $CRM_STATE_DIR/pids/NAME.pid. The supervisor runs
`python -m MODULE` and starts it again, with exponential backoff, whenever it exits; it keeps the
process's pid, restarts and last exit in $CRM_STATE_DIR/supervision/NAME.json, which `status`
reads. `stop` sends SIGTERM to the supervisor, which passes it on and exits once the process has;
`kill=True` SIGKILLs both. Logs: $CRM_STATE_DIR/logs/NAME.log. Starting what runs, or stopping
what does not, changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from crm_shared.ops import platform
from crm_shared.runtime.logs import configure_logging
from crm_shared.runtime.service import Process

log = logging.getLogger("crm_shared.ops.launcher")  # also when run as __main__

REPO_ROOT = Path(__file__).resolve().parents[3]


PROCESSES: tuple[Process, ...] = platform.processes()
BY_NAME = {process.name: process for process in PROCESSES}


def state_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("CRM_STATE_DIR", REPO_ROOT / ".run"))


# ----------------------------------------------------------------------------- restart policy


@dataclass(frozen=True)
class RestartPolicy:
    """When a supervisor starts an exited process again."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    healthy_after: float = 60.0


def next_restart(
    policy: RestartPolicy, failures_in_a_row: int, ran_for: float
) -> tuple[int, float]:
    """After an exit: the failures in a row so far, and the seconds to wait before a new start.

    A run of `healthy_after` seconds wipes the slate, so a process that crashes now and then is
    back after `first_delay`; one that cannot start (no broker, a port taken) is retried ever more
    slowly, doubling up to `max_delay`, and never given up on.
    """
    failures = 1 if ran_for >= policy.healthy_after else failures_in_a_row + 1
    return failures, min(policy.max_delay, policy.first_delay * 2 ** min(failures - 1, 32))


def describe_exit(returncode: int) -> str:
    """`exit 1`, or `killed by SIGKILL` for the negative return code of a killed process."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


@dataclass(frozen=True)
class Supervision:
    """What a process's supervisor last recorded about it."""

    supervisor_pid: int
    pid: int | None  # the process itself; None while it waits to be started again
    restarts: int = 0
    last_exit: int | None = None  # its last return code; negative: the signal that killed it
    last_exit_at: float | None = None  # seconds since the epoch


def status_line(state: Supervision | None) -> str:
    """One line of `./crm status`: what runs, how often it was restarted, why it last stopped."""
    if state is None:
        return "stopped"
    if state.pid is not None:
        running = f"running pid {state.pid}"
    else:
        running = "starting" if state.last_exit is None else "waiting to restart"
    line = f"{running:22} restarts {state.restarts}"
    if state.last_exit is not None and state.last_exit_at is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.last_exit_at))
        line += f"   last exit: {describe_exit(state.last_exit)} at {when}"
    return line


# ----------------------------------------------------------------------------- files and pids


def _pid_file(name: str, env: Mapping[str, str]) -> Path:
    """Holds the supervisor's pid, which is also the process group of the supervisor and its
    process."""
    return state_dir(env) / "pids" / f"{name}.pid"


def _supervision_file(name: str, env: Mapping[str, str]) -> Path:
    return state_dir(env) / "supervision" / f"{name}.json"


def _log_file(name: str, env: Mapping[str, str]) -> Path:
    return state_dir(env) / "logs" / f"{name}.log"


def _supervisor_command(process: Process) -> list[str]:
    return [
        sys.executable,
        "-m",
        "crm_shared.ops.launcher",
        "supervise",
        process.name,
        process.module,
    ]


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _read_supervision(name: str, env: Mapping[str, str]) -> Supervision | None:
    try:
        return Supervision(**json.loads(_supervision_file(name, env).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _write_supervision(name: str, env: Mapping[str, str], state: Supervision) -> None:
    """Replace the file whole, so that a reader never sees half of it."""
    path = _supervision_file(name, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(state)))
    partial.replace(path)


def _live(pid: int) -> tuple[int, list[str]] | None:
    """The process group and command line of a live process, or None.

    A zombie counts as dead: `kill(pid, 0)` succeeds on one, and a SIGKILLed process whose
    parent is gone stays a zombie until PID 1 collects it, a moment later. Taking it for alive is
    what made a start right after a SIGKILL return the dead pid and start nothing.
    """
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return None
    state, _parent, group = stat.rsplit(")", 1)[1].split()[:3]
    if state == "Z":
        return None
    return int(group), [arg.decode(errors="replace") for arg in argv]


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child, so no zombie looks alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _supervisor_pid(process: Process, env: Mapping[str, str]) -> int | None:
    """The pid of the process's running supervisor; a pid file naming a dead or recycled pid (one
    running another command) is stale."""
    pid = _read_pid(_pid_file(process.name, env))
    found = None if pid is None else _live(pid)
    if found is None or found[1][1:] != _supervisor_command(process)[1:]:
        return None
    return pid


def _supervised_pid(process: Process, env: Mapping[str, str], group: int) -> int | None:
    """The pid of the process that the supervisor heading `group` last started, while it runs.

    Checked by process group, not by command line: faust may retitle its process."""
    state = _read_supervision(process.name, env)
    if state is None or state.supervisor_pid != group or state.pid is None:
        return None
    found = _live(state.pid)
    return state.pid if found is not None and found[0] == group else None


def running_pid(process: Process, env: Mapping[str, str]) -> int | None:
    """The pid of the process itself while its supervisor runs it, if it runs."""
    supervisor = _supervisor_pid(process, env)
    return None if supervisor is None else _supervised_pid(process, env, supervisor)


def status(process: Process, env: Mapping[str, str]) -> Supervision | None:
    """What the running supervisor of the process recorded; None when it is not supervised."""
    supervisor = _supervisor_pid(process, env)
    if supervisor is None:
        return None
    state = _read_supervision(process.name, env)
    if state is None or state.supervisor_pid != supervisor:
        return Supervision(supervisor_pid=supervisor, pid=None)  # it is starting its process
    return state


# ----------------------------------------------------------------------------- start, stop


def start(process: Process, env: Mapping[str, str]) -> int:
    """Start the process under a supervisor of its own, detached, unless it runs; return the
    supervisor's pid."""
    supervisor = _supervisor_pid(process, env)
    if supervisor is not None:
        return supervisor
    stop(process, env)  # what a supervisor killed on its own left behind, if anything
    log_path = _log_file(process.name, env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _pid_file(process.name, env).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_output:
        child = subprocess.Popen(
            _supervisor_command(process),
            env=dict(env),
            stdout=log_output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO_ROOT,
        )
    _pid_file(process.name, env).write_text(str(child.pid))
    return child.pid


START_GRACE_SECONDS = 5.0
"""How long a supervisor just started may not yet be recognisable as one (on a loaded machine
the fork runs a while before it becomes the supervisor's command)."""


def wait_healthy(processes: Iterable[Process], env: Mapping[str, str], timeout: float = 90) -> None:
    """Wait until every process answers on its health URL; fail with the log tail if one exits
    meanwhile: its supervisor would start it again, but a failing start needs a person."""
    since = time.time()
    pending = list(processes)
    deadline = time.monotonic() + timeout
    grace_ends = time.monotonic() + START_GRACE_SECONDS
    while pending:
        process = pending[0]
        state = status(process, env)
        if state is None and time.monotonic() < grace_ends:
            time.sleep(0.1)  # a supervisor just forked shows the parent's command line until exec
            continue
        if state is None:
            raise RuntimeError(f"{process.name} is not running:\n{log_tail(process, env)}")
        if state.last_exit is not None and (state.last_exit_at or 0) >= since:
            raise RuntimeError(
                f"{process.name} exited during start-up ({describe_exit(state.last_exit)}):\n"
                f"{log_tail(process, env)}"
            )
        if state.pid is not None and _answers(process.health_url(env)):
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{process.name} not healthy after {timeout:.0f} s:\n{log_tail(process, env)}"
            )
        time.sleep(0.3)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def stop(
    process: Process, env: Mapping[str, str], *, kill: bool = False, timeout: float = 30
) -> bool:
    """SIGTERM the supervisor, which stops its process and exits (SIGKILL both with kill=True),
    and wait for both to go, SIGKILLing what is left after `timeout`; True if either ran."""
    pid_file = _pid_file(process.name, env)
    group = _read_pid(pid_file)
    if group is None:
        return False

    def remaining() -> bool:
        supervisor = _supervisor_pid(process, env)
        return supervisor is not None or _supervised_pid(process, env, group) is not None

    if not remaining():
        pid_file.unlink(missing_ok=True)
        return False
    if kill:
        _signal_group(group, signal.SIGKILL)
    elif _supervisor_pid(process, env) is not None:
        os.kill(group, signal.SIGTERM)  # the supervisor passes it on, and restarts nothing
    else:
        _signal_group(group, signal.SIGTERM)  # its supervisor was killed alone
    if not wait_until(lambda: not remaining(), timeout):
        _signal_group(group, signal.SIGKILL)
        wait_until(lambda: not remaining(), timeout)
    pid_file.unlink(missing_ok=True)
    return True


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)


def wait_until(done: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    """Poll until done() holds or `timeout` seconds pass; whether it holds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


# ----------------------------------------------------------------------------- the supervisor


def supervise(
    name: str, module: str, env: Mapping[str, str], policy: RestartPolicy = RestartPolicy()
) -> None:
    """Run `python -m module` until SIGTERM or SIGINT, starting it again whenever it exits.

    The signal is passed on to the process; once it has exited the supervisor exits too. The
    process shares the supervisor's process group, so a SIGKILL to the group ends both.
    """
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop_requested(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_requested)
    signal.signal(signal.SIGINT, stop_requested)
    state = Supervision(supervisor_pid=os.getpid(), pid=None)
    failures = 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-m", module], env=dict(env), stdin=subprocess.DEVNULL, cwd=REPO_ROOT
        )
        if stopping:  # asked to stop while it was being started
            child.terminate()
        state = replace(state, pid=child.pid)
        _write_supervision(name, env, state)
        returncode = child.wait()
        state = replace(state, pid=None, last_exit=returncode, last_exit_at=time.time())
        _write_supervision(name, env, state)
        if stopping:
            break
        ran_for = time.monotonic() - started
        failures, delay = next_restart(policy, failures, ran_for)
        log.warning(
            "process exited; starting it again",
            extra={
                "exit": describe_exit(returncode),
                "ran_seconds": round(ran_for, 1),
                "restart_in_seconds": delay,
                "failures_in_a_row": failures,
            },
        )
        if wait_until(lambda: stopping, delay, poll=0.2):
            break
        state = replace(state, restarts=state.restarts + 1)
    log.info("supervisor stopped", extra={"exit": describe_exit(returncode)})


def log_tail(process: Process, env: Mapping[str, str], lines: int = 30) -> str:
    path = _log_file(process.name, env)
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    actions = parser.add_subparsers(dest="action", required=True)
    for action in ("start", "stop", "status"):
        actions.add_parser(action).add_argument(
            "--only", nargs="*", choices=sorted(BY_NAME), help="a subset of processes"
        )
    supervised = actions.add_parser("supervise", help="run one process, restarting it")
    supervised.add_argument("name")
    supervised.add_argument("module")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.action == "supervise":
        configure_logging(args.name, env.get("CRM_LOG_LEVEL", "INFO"))
        supervise(args.name, args.module, env)
        return
    chosen = [BY_NAME[name] for name in args.only] if args.only else list(PROCESSES)
    if args.action == "start":
        for process in chosen:
            supervisor = start(process, env)
            print(
                f"starting {process.name} (supervisor pid {supervisor}, :{process.port(env)})",
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
            print(f"{process.name:24} {status_line(status(process, env))}")


if __name__ == "__main__":
    main()
