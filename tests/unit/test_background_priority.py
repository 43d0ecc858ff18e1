"""Background work yields the CPU: lower_priority changes this process, or a PostgreSQL server
process on this machine, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys

from crm_shared.runtime.db import BACKGROUND_NICENESS, lower_priority


def test_a_process_lowers_its_own_priority() -> None:
    script = (
        "import os; from crm_shared.runtime.db import lower_priority; "
        "print(lower_priority(0), os.getpriority(os.PRIO_PROCESS, 0))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["True", str(BACKGROUND_NICENESS)]


def test_a_process_that_is_not_postgres_is_left_as_it_is() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        before = os.getpriority(os.PRIO_PROCESS, sleeper.pid)
        assert lower_priority(sleeper.pid) is False
        assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_process_that_is_gone_is_not_an_error() -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    assert lower_priority(finished.pid) is False
