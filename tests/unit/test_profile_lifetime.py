"""Lifetime value and churn: the BG/NBD and Gamma-Gamma fits against the parameters Fader, Hardie
and Lee published for the CDNOW sample, recovery of known parameters from simulated customers,
the predictions' behaviour, the reasons in plain words, and when the model is fitted again."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from importlib.resources import files

import numpy as np
import pytest

from profile_service.lifetime import (
    CurrencyModel,
    ModelNotFitted,
    Prediction,
    PurchaseHistory,
    PurchaseParameters,
    SpendParameters,
    alive_reason,
    purchases_reason,
    refit_trigger,
    value_reason,
)
from profile_service.lifetime_fit import fit_all, fit_currency, fit_purchases, fit_spend, predict

CDNOW = files("lifetimes") / "datasets" / "cdnow_customers_summary_with_transactions.csv"
"""The CDNOW sample as the paper used it (2,357 customers, weeks, mean spend of repeat
purchases), shipped with `lifetimes`."""

# Fader, Hardie and Lee (2005), "Counting your customers the easy way", and (2005) "RFM and CLV:
# using iso-value curves", on the same sample.
PAPER_PURCHASES = PurchaseParameters(r=0.243, alpha=4.414, a=0.793, b=2.426)
PAPER_SPEND = SpendParameters(p=6.25, q=3.74, gamma=15.44)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _cdnow() -> list[dict[str, str]]:
    with CDNOW.open() as lines:
        return list(csv.DictReader(lines))


def _close(fitted: object, published: object, tolerance: float) -> None:
    for name, value in vars(published).items():
        found = getattr(fitted, name)
        assert found == pytest.approx(value, rel=tolerance), (name, found, value)


def test_bg_nbd_fit_gives_the_published_cdnow_parameters() -> None:
    rows = _cdnow()
    assert len(rows) == 2357
    fitted = fit_purchases(
        [int(r["x"]) for r in rows], [float(r["t_x"]) for r in rows], [float(r["T"]) for r in rows]
    )
    _close(fitted, PAPER_PURCHASES, 0.002)  # the paper rounds to three decimals


def test_gamma_gamma_fit_gives_the_published_cdnow_parameters() -> None:
    repeaters = [r for r in _cdnow() if int(r["x"]) > 0]
    assert len(repeaters) == 946
    fitted = fit_spend([int(r["x"]) for r in repeaters], [float(r["zbar"]) for r in repeaters])
    _close(fitted, PAPER_SPEND, 0.002)


def test_the_papers_worked_customer_expects_the_published_purchases() -> None:
    # x = 2, t_x = 30.43, T = 38.86 weeks: 1.226 purchases expected in the next 39 weeks.
    model = CurrencyModel("USD", PAPER_PURCHASES, PAPER_SPEND, 2357, 946)
    customer = PurchaseHistory("1", "USD", 2, 30.43, 38.86, 22.35)
    [prediction] = predict(model, [customer], horizon_days=39)
    assert prediction.expected_purchases == pytest.approx(1.226, abs=0.002)
    # Gamma-Gamma weighs the customer's mean against the population's (p * gamma / (q - 1)).
    population = PAPER_SPEND.population_mean
    assert min(22.35, population) < prediction.expected_spend < max(22.35, population)


def _simulate(
    truth: PurchaseParameters, customers: int, seed: int
) -> tuple[list[int], list[float], list[float]]:
    """Customers drawn from BG/NBD itself: a purchase rate from Gamma(r, alpha), a drop-out
    chance from Beta(a, b), first purchase at day 0, watched for 100 to 400 days."""
    rng = np.random.default_rng(seed)
    xs, spans, ages = [], [], []
    for _ in range(customers):
        rate = rng.gamma(truth.r, 1 / truth.alpha)
        drop = rng.beta(truth.a, truth.b)
        age = float(rng.uniform(100, 400))
        x, t, last = 0, 0.0, 0.0
        while True:
            t += rng.exponential(1 / rate)
            if t > age:
                break
            x, last = x + 1, t
            if rng.random() < drop:
                break
        xs.append(x)
        spans.append(last)
        ages.append(age)
    return xs, spans, ages


def test_a_fit_in_days_recovers_the_parameters_customers_were_drawn_from() -> None:
    truth = PurchaseParameters(r=0.8, alpha=40.0, a=0.9, b=3.0)
    fitted = fit_purchases(*_simulate(truth, 4000, seed=7))
    _close(fitted, truth, 0.25)


def _history(
    customer: str,
    repeat: int,
    span: float,
    age: float,
    spend: float | None = 20.0,
    currency: str = "GBP",
) -> PurchaseHistory:
    return PurchaseHistory(customer, currency, repeat, span, age, spend if repeat else None)


def _model() -> CurrencyModel:
    return CurrencyModel(
        "GBP", PurchaseParameters(0.8, 40.0, 0.9, 3.0), SpendParameters(6.0, 4.0, 15.0), 100, 40
    )


def test_silence_against_the_customers_rhythm_lowers_the_probability_alive() -> None:
    recent, lapsed, once = predict(
        _model(),
        [
            _history("recent", 6, 170, 180),
            _history("lapsed", 6, 60, 180),
            _history("once", 0, 0, 180),
        ],
    )
    assert 0 <= lapsed.probability_alive < recent.probability_alive <= 1
    # BG/NBD: a customer who never came back has not yet had a chance to drop out.
    assert once.probability_alive == 1
    assert lapsed.expected_purchases < recent.expected_purchases


def test_expected_purchases_and_value_grow_with_the_horizon() -> None:
    customer = [_history("c", 3, 90, 120)]
    [year] = predict(_model(), customer, horizon_days=365)
    [month] = predict(_model(), customer, horizon_days=30)
    assert 0 < month.expected_purchases < year.expected_purchases
    assert year.lifetime_value == pytest.approx(year.expected_purchases * year.expected_spend)


def test_spend_is_the_customers_mean_shrunk_toward_the_population() -> None:
    model = _model()
    big, newcomer, refunded = predict(
        model,
        [
            _history("big", 8, 200, 210, 90.0),
            _history("new", 0, 0, 10),
            _history("refunded", 2, 50, 80, -5.0),
        ],
    )
    population = model.spend.population_mean
    assert population < big.expected_spend < 90
    assert newcomer.expected_spend == pytest.approx(population)
    assert 0 < refunded.expected_spend < population  # a net refund counts as no spend


def test_a_currency_without_enough_customers_gets_no_model_and_says_why() -> None:
    with pytest.raises(ModelNotFitted, match="3 customers, fewer than 10"):
        fit_currency("EUR", [_history(f"e{n}", 1, 5, 30) for n in range(3)])


def test_fit_all_models_each_currency_that_can_carry_one_and_names_the_others() -> None:
    xs, spans, ages = _simulate(PurchaseParameters(0.8, 40.0, 0.9, 3.0), 300, seed=3)
    rng = np.random.default_rng(5)
    gbp = [
        _history(f"g{n}", x, s, a, float(rng.gamma(6, 4)))
        for n, (x, s, a) in enumerate(zip(xs, spans, ages, strict=True))
    ]
    eur = [_history(f"e{n}", 1, 5, 30, currency="EUR") for n in range(3)]
    fit = fit_all(gbp + eur)
    assert [m.currency for m in fit.models] == ["GBP"]
    assert "fewer than 10" in fit.skipped["EUR"]
    assert {h.customer_id for h, _ in fit.predictions} == {h.customer_id for h in gbp}
    assert all(0 <= p.probability_alive <= 1 for _, p in fit.predictions)
    assert all(
        math.isfinite(p.lifetime_value) and p.lifetime_value >= 0 for _, p in fit.predictions
    )


def test_reasons_compare_the_silence_with_the_customers_usual_gap() -> None:
    assert (
        alive_reason(_history("c", 4, 120, 260))
        == "no purchase for 140 days while usually every 30 days"
    )
    assert (
        alive_reason(_history("c", 4, 120, 130))
        == "last purchase 10 days ago, usually every 30 days"
    )
    assert alive_reason(_history("c", 0, 0, 1)).startswith("a single purchase day, 1 day ago")


def test_reasons_state_the_expected_purchases_and_how_the_value_is_made() -> None:
    history = _history("c", 4, 120, 260, 50.0)
    prediction = Prediction("c", "GBP", 0.4, 2.14, 45.2)
    assert purchases_reason(prediction, history, 365) == (
        "expected 2.1 purchases in the next 365 days, from 5 purchase days in 260 days"
    )
    assert value_reason(prediction, history, 365) == (
        "96.73 GBP over 365 days: 2.1 expected purchases of 45.20 GBP each (their repeat "
        "purchases averaged 50.00, weighed with what customers spend on average)"
    )
    newcomer = _history("n", 0, 0, 3)
    assert "no repeat purchase yet" in value_reason(prediction, newcomer, 365)
    assert "from one purchase day in 3 days" in purchases_reason(prediction, newcomer, 365)


@pytest.mark.parametrize(
    ("fitted_at", "requested", "moved", "trigger"),
    [
        (None, False, False, "first"),
        (None, False, True, "first"),
        (NOW - timedelta(minutes=5), True, False, "requested"),
        (NOW - timedelta(minutes=5), False, True, None),
        (NOW - timedelta(hours=2), False, True, "scheduled"),
        (NOW - timedelta(hours=2), False, False, None),
    ],
)
def test_the_model_is_fitted_again_when_asked_when_missing_or_old_with_new_data(
    fitted_at: datetime | None, requested: bool, moved: bool, trigger: str | None
) -> None:
    assert refit_trigger(fitted_at, NOW, requested, moved) == trigger


def test_the_profile_api_reads_lifetime_values_without_loading_the_fitting() -> None:
    probe = (
        "import sys, profile_service.api, profile_service.lifetime_api; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lifetimes', 'pandas'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
