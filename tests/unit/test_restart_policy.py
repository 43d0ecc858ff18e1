"""The supervisor's restart policy: quick after a healthy run, ever slower while a start keeps
failing, bounded, never given up; and how `./crm status` words what it recorded."""

from __future__ import annotations

import signal

from crm_shared.ops.launcher import (
    RestartPolicy,
    Supervision,
    describe_exit,
    next_restart,
    status_line,
)

POLICY = RestartPolicy(first_delay=1.0, max_delay=30.0, healthy_after=60.0)


def test_the_first_crash_is_restarted_after_the_first_delay() -> None:
    assert next_restart(POLICY, 0, ran_for=5.0) == (1, 1.0)
    assert next_restart(POLICY, 0, ran_for=3600.0) == (1, 1.0)


def test_crashes_in_a_row_double_the_delay_up_to_the_ceiling() -> None:
    failures, delays = 0, []
    for _ in range(8):
        failures, delay = next_restart(POLICY, failures, ran_for=2.0)
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert failures == 8


def test_a_healthy_run_forgives_earlier_failures() -> None:
    failures, _ = next_restart(POLICY, 6, ran_for=2.0)
    assert failures == 7
    assert next_restart(POLICY, failures, ran_for=POLICY.healthy_after) == (1, 1.0)


def test_a_process_failing_for_days_is_still_restarted_at_the_ceiling() -> None:
    assert next_restart(POLICY, 100_000, ran_for=0.1) == (100_001, 30.0)


def test_exits_are_described_by_code_or_by_signal() -> None:
    assert describe_exit(0) == "exit 0"
    assert describe_exit(1) == "exit 1"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-signal.SIGTERM) == "killed by SIGTERM"


def test_the_status_line_shows_the_pid_the_restarts_and_the_last_exit() -> None:
    state = Supervision(
        supervisor_pid=10, pid=12, restarts=2, last_exit=-signal.SIGKILL, last_exit_at=1e9
    )
    line = status_line(state)
    assert line.startswith("running pid 12")
    assert "restarts 2" in line
    assert "last exit: killed by SIGKILL at 2001-09-" in line


def test_the_status_line_of_a_process_not_running_now() -> None:
    waiting = Supervision(supervisor_pid=10, pid=None, restarts=0, last_exit=1, last_exit_at=1e9)
    assert status_line(waiting).startswith("waiting to restart")
    assert "exit 1" in status_line(waiting)
    assert status_line(Supervision(supervisor_pid=10, pid=None)).startswith("starting")
    assert status_line(None) == "stopped"
