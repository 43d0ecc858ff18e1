"""The set-up compiles the installed packages to bytecode once (`crm`'s ensure_python), so that
no process compiles them at each start where PYTHONDONTWRITEBYTECODE is set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Imports what a worker and the lifetime fit import, then names each installed module that
# was compiled from source because it has no bytecode file.
_UNCOMPILED = """
import importlib.util, json, os, sys, sysconfig
import profile_service.lifetime_fit, profile_service.worker, gateway_service.api
installed = sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]
print(json.dumps(sorted(
    name for name, path in ((n, getattr(m, "__file__", None) or "") for n, m in sys.modules.items())
    if path.endswith(".py") and path.startswith(installed)
    and not os.path.exists(importlib.util.cache_from_source(path))
)))
"""


def test_the_installed_modules_a_worker_imports_load_from_compiled_bytecode() -> None:
    shown = subprocess.run(
        [sys.executable, "-c", _UNCOMPILED],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},  # as on the CI machine
        capture_output=True,
        text=True,
        check=True,
    )
    uncompiled = json.loads(shown.stdout)
    assert uncompiled == [], (
        f"{len(uncompiled)} installed modules have no bytecode, e.g. {uncompiled[:5]}:"
        " install with `uv sync --frozen --compile-bytecode`, as ./crm does"
    )
