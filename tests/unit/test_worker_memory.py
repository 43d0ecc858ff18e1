"""A worker's allocator gives large freed blocks back instead of keeping them in its arenas.

Each case runs in a fresh interpreter: the settings are process-wide and the pattern below
depends on what the process allocated before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from crm_shared.runtime import memory

glibc_only = pytest.mark.skipif(memory._glibc() is None, reason="the allocator is not glibc")

# A large block is freed first (glibc then raises its mmap threshold to that size), then a job
# takes a hundred half-megabyte buffers and keeps one block taken after them (as a worker keeps
# some of what a job made), and frees the buffers. Prints what tune_allocator set and the free
# bytes malloc still holds (mallinfo2's fordblks), in MiB.
PROGRAM = """
import ctypes, json, sys
from crm_shared.runtime import memory

applied = memory.tune_allocator(json.loads(sys.argv[1])) if sys.argv[2] == "tuned" else {}

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(8 << 20))
buffers = [libc.malloc(512 << 10) for _ in range(100)]
kept = libc.malloc(512 << 10)
for buffer in buffers:
    libc.free(buffer)
print(json.dumps({"applied": applied, "free_mib": libc.mallinfo2().fordblks / 2**20}))
"""


def run(mode: str, env: dict[str, str] | None = None) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, json.dumps(env or {}), mode],
        env=clean,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


@glibc_only
def test_glibc_defaults_keep_freed_buffers() -> None:
    """The pattern the settings are for: without them, the freed buffers stay with malloc."""
    assert float(str(run("default")["free_mib"])) > 40


@glibc_only
def test_tuned_allocator_gives_freed_buffers_back() -> None:
    found = run("tuned")
    assert found["applied"] == {
        "MALLOC_ARENA_MAX": memory.ARENA_MAX,
        "MALLOC_MMAP_THRESHOLD_": memory.MMAP_THRESHOLD_BYTES,
    }
    assert float(str(found["free_mib"])) < 5


@glibc_only
def test_a_setting_the_environment_makes_is_left_to_glibc() -> None:
    found = run("tuned", {"MALLOC_MMAP_THRESHOLD_": "4194304"})
    assert found["applied"] == {"MALLOC_ARENA_MAX": memory.ARENA_MAX}
