"""The worker's periodic job that fits the lifetime-value model again: on request (the API files
a request), when there is none yet, and when it is older than REFIT_AFTER and the projection
moved. The fit runs in a thread (numpy releases the interpreter lock in its array work; the
job's duty keeps the fold's share); the new version is swapped in with its predictions in one
transaction (store.save_lifetime_model)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg

from profile_service import lifetime, metrics, store

if TYPE_CHECKING:
    from profile_service import lifetime_fit

log = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 5.0
"""How often the worker looks for a refit request (three small queries)."""
FIT_DUTY = 0.2
"""At most this share of the time goes to fitting."""


class LifetimeRefitter:
    """Fits when `lifetime.refit_trigger` says so, on one replica at a time (an advisory lock),
    and publishes the model in use as gauges on every look."""

    def __init__(self) -> None:
        self.fitted_at_mark: tuple[int, datetime | None] | None = None

    async def __call__(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            current = await store.current_lifetime_model(conn)
            _publish(current)
            requests = await store.pending_lifetime_requests(conn)
            mark = await store.projection_mark(conn)
            trigger = lifetime.refit_trigger(
                current.fitted_at if current else None,
                datetime.now(UTC),
                requested=bool(requests),
                moved=mark != self.fitted_at_mark,
            )
            if trigger is None or not await store.try_lifetime_fit_lock(conn):
                return
            try:
                version = await self.fit(conn, trigger, requests)
            finally:
                await store.release_lifetime_fit_lock(conn)
            self.fitted_at_mark = mark
            if version is not None:
                _publish(await store.current_lifetime_model(conn))

    async def fit(self, conn: asyncpg.Connection, trigger: str, requests: list[int]) -> int | None:
        """Fit on the histories as they are now and swap the version in; None when there is
        nothing to fit and nobody asked."""
        histories, as_of = await store.purchase_histories(conn)
        if not histories and not requests:
            return None
        fitted_at = datetime.now(UTC)
        started = time.monotonic()
        fit = await asyncio.to_thread(_fit_all, histories)
        seconds = time.monotonic() - started
        metrics.LIFETIME_FIT_SECONDS.observe(seconds)
        version = await store.save_lifetime_model(
            conn,
            lifetime.FittedVersion(
                fitted_at, as_of, seconds, trigger, fit.models, fit.predictions, fit.skipped
            ),
            requests,
        )
        log.info(
            "lifetime-value model fitted",
            extra={
                "version": version,
                "trigger": trigger,
                "customers": len(fit.predictions),
                "seconds": round(seconds, 2),
                "skipped": fit.skipped,
            },
        )
        return version


def _fit_all(histories: list[lifetime.PurchaseHistory]) -> lifetime_fit.Fit:
    """lifetime_fit.fit_all, imported in the fitting thread on the first fit: pandas and
    lifetimes take seconds to import (half a minute on a loaded machine), and the worker must
    start and turn healthy without waiting for them."""
    from profile_service import lifetime_fit

    return lifetime_fit.fit_all(histories)


def _publish(current: lifetime.ModelInUse | None) -> None:
    """The model in use as gauges (every replica shows it, whichever fitted)."""
    metrics.LIFETIME_MODEL_VERSION.set(current.version if current else 0)
    metrics.LIFETIME_MODEL_FITTED.set(current.fitted_at.timestamp() if current else 0)
    for model in current.models if current else ():
        metrics.LIFETIME_CUSTOMERS_SCORED.labels(model.currency).set(model.customers)
