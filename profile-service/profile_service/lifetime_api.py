"""Profile read API of lifetime value and churn: a customer's figures with their reasons, the
model in use, and a request to fit it again (the worker fits in the background).

Mounted by profile_service.api's create_app, whose parameter types it shares. The predictions
were computed when the version was fitted; reading one is one indexed lookup.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel

from crm_shared.runtime.http import model_response
from profile_service import lifetime, store
from profile_service.api import Conn, CustomerIdPath, find_person

router = APIRouter()


class LifetimeReasons(BaseModel):
    probability_alive: str
    expected_purchases: str
    lifetime_value: str


class LifetimeFigures(BaseModel):
    currency: str
    probability_alive: float
    """The probability that the customer still buys (BG/NBD), as of the model's fit."""
    expected_purchases: float
    expected_spend_per_purchase: float
    lifetime_value: float
    """Expected spend over the horizon, undiscounted, in `currency`."""
    purchase_days: int
    days_since_last_purchase: float
    usual_days_between_purchases: float | None
    reasons: LifetimeReasons


class CustomerLifetime(BaseModel):
    customer_id: str
    model_version: int
    fitted_at: datetime
    as_of: datetime | None
    horizon_days: int
    by_currency: list[LifetimeFigures]


class CurrencyParameters(BaseModel):
    currency: str
    customers: int
    repeat_customers: int
    purchases: dict[str, float]
    """BG/NBD: r, alpha (days), a, b."""
    spend: dict[str, float]
    """Gamma-Gamma: p, q, gamma; and the population's mean spend per purchase."""


class LifetimeModel(BaseModel):
    version: int
    fitted_at: datetime
    as_of: datetime | None
    horizon_days: int
    fit_seconds: float
    trigger: str
    currencies: list[CurrencyParameters]
    skipped_currencies: dict[str, str]
    pending_refits: int


class RefitRequested(BaseModel):
    request_id: int
    requested_at: datetime
    current_version: int | None


def _figures(scored: lifetime.Scored) -> LifetimeFigures:
    history, prediction = scored.history, scored.prediction
    return LifetimeFigures(
        currency=history.currency,
        probability_alive=round(prediction.probability_alive, 4),
        expected_purchases=round(prediction.expected_purchases, 3),
        expected_spend_per_purchase=round(prediction.expected_spend, 2),
        lifetime_value=round(prediction.lifetime_value, 2),
        purchase_days=history.repeat_purchases + 1,
        days_since_last_purchase=round(history.days_since_last, 1),
        usual_days_between_purchases=(
            None if history.usual_gap_days is None else round(history.usual_gap_days, 1)
        ),
        reasons=LifetimeReasons(
            probability_alive=lifetime.alive_reason(history),
            expected_purchases=lifetime.purchases_reason(prediction, history, scored.horizon_days),
            lifetime_value=lifetime.value_reason(prediction, history, scored.horizon_days),
        ),
    )


def _parameters(model: lifetime.CurrencyModel) -> CurrencyParameters:
    return CurrencyParameters(
        currency=model.currency,
        customers=model.customers,
        repeat_customers=model.repeat_customers,
        purchases=vars(model.purchases),
        spend={**vars(model.spend), "population_mean": model.spend.population_mean},
    )


@router.get("/customers/{customer_id}/lifetime-value", response_model=CustomerLifetime)
async def customer_lifetime(customer_id: CustomerIdPath, conn: Conn) -> Response:
    """Probability alive, expected purchases, expected spend and lifetime value over the
    model's horizon, per currency, each with its reason in plain words: those of the person the
    record belongs to (its merged and aliased records' purchases together)."""
    person = await find_person(conn, customer_id)
    found = await store.lifetime_of(conn, person.person_id)
    if not found:
        raise HTTPException(
            404,
            f"customer {customer_id!r} has no lifetime value: no purchase when the model in use "
            "was fitted, or no model yet",
        )
    first = found[0]
    return model_response(
        CustomerLifetime(
            customer_id=person.person_id,
            model_version=first.version,
            fitted_at=first.fitted_at,
            as_of=first.as_of,
            horizon_days=first.horizon_days,
            by_currency=[_figures(scored) for scored in found],
        )
    )


@router.get("/analytics/lifetime-value/model", response_model=LifetimeModel)
async def lifetime_model(conn: Conn) -> Response:
    """The lifetime-value model in use: version, fit date, parameters per currency, and the
    currencies left without a model (and why)."""
    current = await store.current_lifetime_model(conn)
    if current is None:
        raise HTTPException(404, "no lifetime-value model has been fitted yet")
    return model_response(
        LifetimeModel(
            version=current.version,
            fitted_at=current.fitted_at,
            as_of=current.as_of,
            horizon_days=current.horizon_days,
            fit_seconds=round(current.fit_seconds, 3),
            trigger=current.trigger,
            currencies=[_parameters(model) for model in current.models],
            skipped_currencies=current.skipped,
            pending_refits=current.pending_refits,
        )
    )


@router.post("/analytics/lifetime-value/refits", response_model=RefitRequested, status_code=202)
async def request_refit(conn: Conn) -> Response:
    """Ask for the model to be fitted again now; the worker fits in the background and swaps
    the new version in (watch `version` and `pending_refits` of the model)."""
    requested = await store.request_lifetime_refit(conn)
    current = await store.current_lifetime_model(conn)
    return Response(
        RefitRequested(
            request_id=requested["id"],
            requested_at=requested["requested_at"],
            current_version=current.version if current else None,
        ).model_dump_json(),
        status_code=202,
        media_type="application/json",
    )
