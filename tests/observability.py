"""Observability test tools: a real Prometheus (Debian's package) and the dashboard generator."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

GENERATOR = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "generate.py"
APT_HINT = "install it with: apt-get install -y prometheus docker-compose"


def require(binary: str) -> str:
    """The binary's path; fail (never skip) when the test command did not install it."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"`{binary}` is not installed (or not on PATH); {APT_HINT}", pytrace=False)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:  # 400/422 carry the PromQL error as JSON
        return error.code, json.loads(error.read() or b"{}")


def query(url: str, expr: str) -> tuple[int, dict[str, Any]]:
    return get_json(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")


@contextmanager
def running_prometheus(config: str, workdir: Path) -> Iterator[str]:
    """Run Prometheus with this configuration until the block ends; yield its base URL."""
    binary = require("prometheus")
    config_path = workdir / "prometheus.yml"
    config_path.write_text(config, encoding="utf-8")
    port = _free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"prometheus exited with {process.returncode}:\n{log_path.read_text()[-4000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready after 60 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def dashboard_generator() -> ModuleType:
    """deploy/grafana/generate.py imported as a module (deploy/ is no package)."""
    spec = importlib.util.spec_from_file_location("crm_grafana_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module
