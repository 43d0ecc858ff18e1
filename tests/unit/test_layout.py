"""The shared package's parts say what they are, and the contracts stay light for other systems."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from crm_shared.ops import platform

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("faust", "aiokafka", "asyncpg", "fastapi", "uvicorn", "httpx", "prometheus_client")


def test_the_contracts_and_sdk_import_without_the_runtime() -> None:
    probe = (
        "import sys, crm_shared.contracts.events, crm_shared.contracts.topics, "
        "crm_shared.contracts.sdk, crm_shared.contracts.generate; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_api_imports_a_worker() -> None:
    for service in platform.services():
        for process in service.processes:
            if process.component != "api":
                continue
            api_file = ROOT / f"{service.name}-service" / (process.module.replace(".", "/") + ".py")
            workers = {m for m in _imported_modules(api_file) if m.endswith(".worker")}
            assert not workers, f"{process.module} imports {workers}"


def test_contracts_depend_on_nothing_else_of_ours() -> None:
    for path in (ROOT / "services/crm_shared/contracts").glob("*.py"):
        ours = {m for m in _imported_modules(path) if m.startswith("crm_shared.")}
        assert all(m.startswith("crm_shared.contracts") for m in ours), (path.name, ours)


def test_every_projection_runs_as_a_worker_of_its_root() -> None:
    for service in platform.projections():
        projection = service.load_projection()
        assert projection.name == service.name
        workers = [p for p in service.processes if p.component == "worker"]
        assert [p.module for p in workers] == [f"{service.name}_service.worker"]
