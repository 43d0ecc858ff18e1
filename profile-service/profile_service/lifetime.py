"""Lifetime value and churn: BG/NBD for how often a customer buys and whether they are still
buying, Gamma-Gamma for how much they spend (Fader, Hardie and Lee), fitted with `lifetimes`
in profile_service.lifetime_fit. Here: what they read and give, and the reasons in plain words,
without numpy, so that the API need not import the fitting (docs/decisions.md).

Time is in days. A customer's history in one currency counts purchase days (orders that were not
cancelled, several on one day are one purchase): x repeat purchase days after the first, t_x days
from the first to the last, T days from the first to "now" (the partition clock), and the mean
spend of the repeat days, net of the refunds that name their orders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

HORIZON_DAYS = 365
"""The horizon of the expected purchases and of the lifetime value."""
MIN_CUSTOMERS = 10
"""A currency with fewer customers gets no model: four parameters need a population."""
MIN_REPEAT_CUSTOMERS = 5
"""Gamma-Gamma is fitted on the customers with a repeat purchase of positive value; fewer than
this and the currency gets no model."""


@dataclass(frozen=True)
class PurchaseHistory:
    """One customer's purchases in one currency, as the models read them."""

    customer_id: str
    currency: str
    repeat_purchases: int
    span_days: float
    age_days: float
    mean_repeat_spend: float | None
    """Mean net spend of the repeat purchase days; None without a repeat purchase."""

    @property
    def days_since_last(self) -> float:
        return self.age_days - self.span_days

    @property
    def usual_gap_days(self) -> float | None:
        """Mean days between purchase days; None with a single purchase day."""
        return self.span_days / self.repeat_purchases if self.repeat_purchases else None


@dataclass(frozen=True)
class PurchaseParameters:
    """BG/NBD: purchase rates Gamma(r, alpha); the chance to drop out after a purchase
    Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True)
class SpendParameters:
    """Gamma-Gamma: spend per purchase Gamma(p, nu) with nu ~ Gamma(q, gamma)."""

    p: float
    q: float
    gamma: float

    @property
    def population_mean(self) -> float:
        """Expected spend per purchase of a customer about whom nothing is known."""
        return self.p * self.gamma / (self.q - 1)


@dataclass(frozen=True)
class CurrencyModel:
    currency: str
    purchases: PurchaseParameters
    spend: SpendParameters
    customers: int
    repeat_customers: int


@dataclass(frozen=True)
class Prediction:
    customer_id: str
    currency: str
    probability_alive: float
    expected_purchases: float
    expected_spend: float
    """Expected spend per future purchase."""

    @property
    def lifetime_value(self) -> float:
        """Expected spend over the horizon, undiscounted."""
        return self.expected_purchases * self.expected_spend


class ModelNotFitted(Exception):
    """The histories of a currency cannot give a model: the message says why."""


@dataclass(frozen=True)
class FittedVersion:
    """One fit over every currency, as stored: the models, each customer's prediction, and the
    currencies left without a model (and why)."""

    fitted_at: datetime
    as_of: datetime | None
    """The newest clock the histories were measured against."""
    fit_seconds: float
    trigger: str
    models: Sequence[CurrencyModel]
    predictions: Sequence[tuple[PurchaseHistory, Prediction]]
    skipped: dict[str, str] = field(default_factory=dict)
    horizon_days: int = HORIZON_DAYS


def _days(value: float) -> str:
    days = round(value)
    return "1 day" if days == 1 else f"{days} days"


def alive_reason(history: PurchaseHistory) -> str:
    """Why the probability alive is what it is: the silence against the customer's rhythm."""
    gap = history.usual_gap_days
    since = history.days_since_last
    if gap is None:
        return (
            f"a single purchase day, {_days(since)} ago: judged by how long customers like them "
            "usually stay"
        )
    if since > gap:
        return f"no purchase for {_days(since)} while usually every {_days(gap)}"
    return f"last purchase {_days(since)} ago, usually every {_days(gap)}"


def purchases_reason(prediction: Prediction, history: PurchaseHistory, horizon_days: int) -> str:
    days = history.repeat_purchases + 1
    bought = "one purchase day" if days == 1 else f"{days} purchase days"
    return (
        f"expected {prediction.expected_purchases:.1f} purchases in the next {horizon_days} days, "
        f"from {bought} in {_days(history.age_days)}"
    )


def value_reason(prediction: Prediction, history: PurchaseHistory, horizon_days: int) -> str:
    spend = f"{prediction.expected_spend:.2f} {history.currency}"
    if history.mean_repeat_spend is None:
        basis = "what customers spend on average (no repeat purchase yet)"
    else:
        basis = (
            f"their repeat purchases averaged {history.mean_repeat_spend:.2f}, "
            "weighed with what customers spend on average"
        )
    return (
        f"{prediction.lifetime_value:.2f} {history.currency} over {horizon_days} days: "
        f"{prediction.expected_purchases:.1f} expected purchases of {spend} each ({basis})"
    )


@dataclass(frozen=True)
class ModelInUse:
    """The current version as stored, with the refits still waiting."""

    version: int
    fitted_at: datetime
    as_of: datetime | None
    horizon_days: int
    fit_seconds: float
    trigger: str
    skipped: dict[str, str]
    models: Sequence[CurrencyModel]
    pending_refits: int


@dataclass(frozen=True)
class Scored:
    """A customer's history and prediction in one currency, by the version in use."""

    version: int
    fitted_at: datetime
    as_of: datetime | None
    horizon_days: int
    history: PurchaseHistory
    prediction: Prediction


REFIT_AFTER = timedelta(minutes=10)
"""A model older than this is fitted again, when the projection moved since."""


def refit_trigger(
    fitted_at: datetime | None,
    now: datetime,
    requested: bool,
    moved: bool,
    refit_after: timedelta = REFIT_AFTER,
) -> str | None:
    """Why the model is to be fitted now, or None: a refit was asked for; there is no model yet
    (a fresh or rebuilt projection); or the model is old and the projection moved since it was
    fitted. The schedule is by the wall clock: when to fit is operations, not a fact of the log."""
    if requested:
        return "requested"
    if fitted_at is None:
        return "first"
    return "scheduled" if moved and now - fitted_at >= refit_after else None
