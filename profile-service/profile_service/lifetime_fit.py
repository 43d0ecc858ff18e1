"""Fitting BG/NBD and Gamma-Gamma with `lifetimes` (Fader, Hardie and Lee), and predicting from
stored parameters with its closed forms. Pure (no I/O); imports numpy, pandas and lifetimes, so
only the worker imports it (profile_service.lifetime holds the types and the reasons).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.utils import ConvergenceError

from profile_service.lifetime import (
    HORIZON_DAYS,
    MIN_CUSTOMERS,
    MIN_REPEAT_CUSTOMERS,
    CurrencyModel,
    ModelNotFitted,
    Prediction,
    PurchaseHistory,
    PurchaseParameters,
    SpendParameters,
)

PENALTIES = (0.0, 0.001, 0.01)
"""L2 penalties on the parameters, tried in turn: the plain maximum likelihood (the published
fit) first; a population it cannot fit (say no one seems to drop out, so a and b grow without
bound) gets the smallest penalty that converges, as the lifetimes documentation advises."""


def _converged(fitter_class: Any, what: str, *data: np.ndarray) -> Any:
    for penalty in PENALTIES:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints the optimiser's state
                return fitter_class(penalizer_coef=penalty).fit(*data)
        except ConvergenceError:
            continue
    raise ModelNotFitted(f"{what} did not converge, even with a penalty of {PENALTIES[-1]}")


def fit_purchases(
    repeat_purchases: Sequence[int] | np.ndarray,
    span: Sequence[float] | np.ndarray,
    age: Sequence[float] | np.ndarray,
) -> PurchaseParameters:
    """BG/NBD by maximum likelihood; the time unit of `span` and `age` is alpha's."""
    fitter = _converged(
        BetaGeoFitter, "BG/NBD", np.asarray(repeat_purchases), np.asarray(span), np.asarray(age)
    )
    r, alpha, a, b = (float(v) for v in fitter.params_[["r", "alpha", "a", "b"]])
    return PurchaseParameters(
        r=_checked("r", r), alpha=_checked("alpha", alpha), a=_checked("a", a), b=_checked("b", b)
    )


def fit_spend(
    repeat_purchases: Sequence[int] | np.ndarray, mean_spend: Sequence[float] | np.ndarray
) -> SpendParameters:
    """Gamma-Gamma by maximum likelihood, on customers with repeat purchases of positive mean."""
    fitter = _converged(
        GammaGammaFitter, "Gamma-Gamma", np.asarray(repeat_purchases), np.asarray(mean_spend)
    )
    p, q, gamma = (float(v) for v in fitter.params_[["p", "q", "v"]])
    if q <= 1:
        raise ModelNotFitted(f"Gamma-Gamma gave q = {q:.3g} <= 1: the mean spend has no mean")
    return SpendParameters(p=_checked("p", p), q=_checked("q", q), gamma=_checked("gamma", gamma))


def _checked(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ModelNotFitted(f"the fit gave {name} = {value}, not a positive number")
    return value


def fit_currency(currency: str, histories: Sequence[PurchaseHistory]) -> CurrencyModel:
    """Both models for one currency's customers; ModelNotFitted when the data cannot carry one."""
    if len(histories) < MIN_CUSTOMERS:
        raise ModelNotFitted(f"{len(histories)} customers, fewer than {MIN_CUSTOMERS}")
    spenders = [h for h in histories if h.repeat_purchases > 0 and (h.mean_repeat_spend or 0) > 0]
    if len(spenders) < MIN_REPEAT_CUSTOMERS:
        raise ModelNotFitted(
            f"{len(spenders)} customers with a repeat purchase, fewer than {MIN_REPEAT_CUSTOMERS}"
        )
    purchases = fit_purchases(
        [h.repeat_purchases for h in histories],
        [h.span_days for h in histories],
        [h.age_days for h in histories],
    )
    spend = fit_spend(
        [h.repeat_purchases for h in spenders], [h.mean_repeat_spend or 0.0 for h in spenders]
    )
    return CurrencyModel(currency, purchases, spend, len(histories), len(spenders))


def _purchase_fitter(parameters: PurchaseParameters) -> BetaGeoFitter:
    """A fitter holding stored parameters, for its closed-form predictions."""
    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series(vars(parameters))
    return fitter


def _spend_fitter(parameters: SpendParameters) -> GammaGammaFitter:
    fitter = GammaGammaFitter()
    fitter.params_ = pd.Series({"p": parameters.p, "q": parameters.q, "v": parameters.gamma})
    return fitter


def predict(
    model: CurrencyModel, histories: Sequence[PurchaseHistory], horizon_days: float = HORIZON_DAYS
) -> list[Prediction]:
    """Probability alive, expected purchases over the horizon and expected spend per purchase,
    for every history (vectorised)."""
    if not histories:
        return []
    x = np.array([h.repeat_purchases for h in histories], dtype=float)
    t_x = np.array([h.span_days for h in histories], dtype=float)
    age = np.array([h.age_days for h in histories], dtype=float)
    # A repeat buyer whose refunds ate the spend has a mean of 0: Gamma-Gamma shrinks it toward
    # the population; a customer without a repeat purchase gets the population's mean.
    spend_seen = np.array([max(h.mean_repeat_spend or 0.0, 0.0) for h in histories])
    buying = _purchase_fitter(model.purchases)
    alive = np.clip(buying.conditional_probability_alive(x, t_x, age), 0.0, 1.0)
    expected = buying.conditional_expected_number_of_purchases_up_to_time(horizon_days, x, t_x, age)
    spend = _spend_fitter(model.spend).conditional_expected_average_profit(x, spend_seen)
    return [
        Prediction(h.customer_id, h.currency, float(p), float(n), float(s))
        for h, p, n, s in zip(histories, alive, expected, np.asarray(spend), strict=True)
    ]


@dataclass(frozen=True)
class Fit:
    models: list[CurrencyModel]
    predictions: list[tuple[PurchaseHistory, Prediction]]
    skipped: dict[str, str]
    """Currencies left without a model, and why."""


def fit_all(histories: Sequence[PurchaseHistory], horizon_days: float = HORIZON_DAYS) -> Fit:
    """A model per currency that has the data for one, and every customer's prediction by it."""
    by_currency: dict[str, list[PurchaseHistory]] = defaultdict(list)
    for history in histories:
        by_currency[history.currency].append(history)
    fit = Fit([], [], {})
    for currency, group in sorted(by_currency.items()):
        try:
            model = fit_currency(currency, group)
        except ModelNotFitted as problem:
            fit.skipped[currency] = str(problem)
            continue
        fit.models.append(model)
        fit.predictions.extend(zip(group, predict(model, group, horizon_days), strict=True))
    return fit
