"""How long-running processes hold memory: glibc malloc settings for the workers, set in the
process so they hold wherever a worker runs (`./crm up`, the soak, Docker, Kubernetes), and the
cyclic garbage collector kept off what lives as long as the process (`freeze_startup_objects`).

glibc's defaults suit short programs, not a worker that allocates large short-lived buffers
(Kafka fetch responses, numpy blocks of the neighbour job, big result lists) from several
threads for days: every thread that allocates may get an arena of its own (up to 8 per core),
and once a large block is freed glibc raises its mmap threshold to that size (up to 32 MiB), so
later large blocks come from the arenas too. What is freed there stays with the process: on
2026-11-30 the recommendation worker held 146 MiB free inside its arenas against 100 MiB in use
(docs/decisions.md, "Worker memory: glibc arenas").
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
from collections.abc import Mapping

from crm_shared.runtime import metrics

log = logging.getLogger(__name__)

ARENA_MAX = 2
"""Arenas malloc may create: threads share them instead of each keeping its own free memory."""
MMAP_THRESHOLD_BYTES = 128 * 1024
"""Blocks from this size up get pages of their own, given back to the system when freed. Setting
it also stops glibc from raising it (and the trim threshold) after each large free."""

_M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
_M_ARENA_MAX = -8

SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("MALLOC_ARENA_MAX", _M_ARENA_MAX, ARENA_MAX),
    ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
)
"""(the glibc environment variable an operator may set instead, mallopt parameter, our value)."""


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): its allocator behaves otherwise; nothing to set
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune_allocator(env: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Set ARENA_MAX and MMAP_THRESHOLD_BYTES, each unless the environment sets its glibc
    variable (which glibc has read already). Call before the process starts threads. Returns
    what was set, by variable name; nothing where glibc is not the allocator."""
    libc = _glibc()
    if libc is None:
        return {}
    applied: dict[str, int] = {}
    for variable, parameter, value in SETTINGS:
        if variable in env:
            continue
        if libc.mallopt(parameter, value) != 1:
            log.warning("mallopt refused a setting", extra={"setting": variable, "value": value})
            continue
        applied[variable] = value
    return applied


YOUNG_OBJECTS_PER_COLLECTION = 10_000
"""Gen-0 threshold of a long-running process (Python's default is 700). A batch of events or
twenty requests in flight hold thousands of tracked objects, nearly all freed by their reference
counts: at 700 the gateway collected about fifty times a second, walking the requests in flight
each time, and the workers' batches, which live until their commit, were walked several times
each and promoted into the older generations, setting off a full collection every 5 to 20
seconds."""


def freeze_startup_objects() -> None:
    """Move everything made so far (modules, pydantic schemas, routes, pools, faust's app: 100,000
    to 180,000 objects) out of the cyclic collector's reach, and collect the young generation less
    often. Call once the process is set up. Those objects live as long as the process, and every
    full collection walked them all: about a fifth of a worker's time at 2,000 events/s went to
    the collector (wall time, in full collections of 150 to 300 ms), the sender spent 46 µs
    of CPU a message on it, and each pause held every request in flight (docs/performance.md).
    gc.freeze is made for this."""
    gc.collect()
    gc.freeze()
    metrics.FROZEN_OBJECTS.set(gc.get_freeze_count())
    gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION, *gc.get_threshold()[1:])
