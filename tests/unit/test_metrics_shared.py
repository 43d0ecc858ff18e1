"""The metrics directory several processes share: a start removes those a killed owner left."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from crm_shared.runtime import metrics


@pytest.fixture
def temporary_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _exited_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_start_removes_the_directories_of_owners_no_longer_running(temporary_root: Path) -> None:
    orphan = temporary_root / f"crm-gateway-metrics-{_exited_pid()}-abc"
    orphan.mkdir()
    (orphan / "counter_1.db").write_bytes(b"x")
    alive = temporary_root / f"crm-gateway-metrics-{os.getppid()}-def"
    alive.mkdir()
    other_name = temporary_root / f"crm-profile-metrics-{_exited_pid()}-ghi"
    other_name.mkdir()
    with metrics.shared_between_processes("gateway") as directory:
        assert Path(directory).name.startswith(f"crm-gateway-metrics-{os.getpid()}-")
        assert not orphan.exists()
        assert alive.exists() and other_name.exists()
    assert not Path(directory).exists()
    assert os.environ.get(metrics.SHARED_DIRECTORY_VARIABLE) is None
