"""The UCI Online Retail file replayed through Kafka into the profile, checked against an
independent pandas computation over the same file (issue 7, item 9).

The events are the demo loader's (`crm_shared.ops.demo.retail`), renamed into a population of
their own: every id and customer gets a run prefix and every amount a currency no other test
uses, so the population-wide figures (top customers, the cube) count this file and nothing else.
pandas reads the CSV itself and applies the cleaning rules of docs/demo-data.md; nothing of the
loader's transform is reused on that side.
"""

from __future__ import annotations

import random
import string
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from crm_shared.ops.demo.retail import load_retail
from tests.integration.helpers import (
    create_api_key,
    eventually,
    gateway_url,
    service_auth,
    unique,
)
from tests.integration.test_crash_recovery import publish
from tests.uci_data import DATA, real_file

pytestmark = [
    pytest.mark.integration,
    real_file,
]

SAMPLE = 150
TOP_SHARE = Decimal("0.25")
SECONDS_PER_DAY = 86_400


def _renamed(event: dict[str, Any], prefix: str, currency: str) -> dict[str, Any]:
    """The event in the test's own population: prefixed ids and subject, its own currency."""
    data = dict(event["data"])
    for field in ("order_id", "refund_id"):
        if data.get(field):
            data[field] = f"{prefix}-{data[field]}"
    if "currency" in data:
        data["currency"] = currency
    if "identifiers" in data:
        data["identifiers"] = {k: f"{prefix}-{v}" for k, v in data["identifiers"].items()}
    return {
        **event,
        "id": f"{prefix}-{event['id']}",
        "subject": f"{prefix}-{event['subject']}",
        "data": data,
    }


def _expected(path: Path) -> pd.DataFrame:
    """Per customer, from the raw CSV: orders, gross, refunded and net revenue (Decimal), and
    the last order's time (UTC, an invoice's earliest line). Rules of docs/demo-data.md: drop
    bad-debt invoices (A), lines without a customer, negative quantities outside cancellations
    (C), positive quantities inside them and negative prices; a C invoice refunds its lines."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw = raw[~raw["InvoiceNo"].str.startswith("A") & (raw["CustomerID"].str.strip() != "")]
    quantity = raw["Quantity"].astype(int)
    cancellation = raw["InvoiceNo"].str.startswith("C")
    price = raw["UnitPrice"].map(Decimal)
    kept = (cancellation & (quantity <= 0)) | (~cancellation & (quantity >= 0))
    kept &= price.map(lambda p: p >= 0)
    lines = pd.DataFrame(
        {
            "customer": raw["CustomerID"].str.strip(),
            "invoice": raw["InvoiceNo"],
            "cancellation": cancellation,
            "amount": [p * abs(q) for p, q in zip(price, quantity, strict=True)],
            "time": pd.to_datetime(raw["InvoiceDate"])
            .dt.tz_localize("Europe/London", ambiguous=True)
            .dt.tz_convert("UTC"),
        }
    )[kept]
    invoices = lines.groupby(["customer", "invoice", "cancellation"], as_index=False).agg(
        amount=("amount", "sum"), time=("time", "min")
    )
    orders = invoices[~invoices["cancellation"]].groupby("customer")
    refunds = invoices[invoices["cancellation"]].groupby("customer")
    customers = pd.DataFrame(index=pd.Index(sorted(set(invoices["customer"])), name="customer"))
    customers["orders"] = orders.size().reindex(customers.index, fill_value=0)
    customers["gross"] = orders["amount"].sum().reindex(customers.index, fill_value=Decimal(0))
    customers["refunded"] = refunds["amount"].sum().reindex(customers.index, fill_value=Decimal(0))
    customers["net"] = customers["gross"] - customers["refunded"]
    customers["last_order"] = orders["time"].max().reindex(customers.index)
    monthly = invoices.assign(
        month=invoices["time"].dt.strftime("%Y-%m"),
        revenue=[
            -a if c else a
            for a, c in zip(invoices["amount"], invoices["cancellation"], strict=True)
        ],
    )
    customers.attrs["monthly"] = monthly.groupby("month")["revenue"].sum().to_dict()
    return customers


def _rfm(customers: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """Scores 1-5 by percent rank over the customers with an order, recency in days rounded to
    hundredths, as the issue defines them, computed here from the file's own figures."""
    active = customers[customers["orders"] > 0].copy()
    active["recency"] = [
        max(Decimal(0), Decimal((as_of - last).total_seconds()) / SECONDS_PER_DAY).quantize(
            Decimal("0.01"), rounding=ROUND_HALF_UP
        )
        for last in active["last_order"]
    ]
    size = len(active)

    def score(column: pd.Series, *, best_high: bool) -> pd.Series:
        rank = column.rank(method="min", ascending=best_high) - 1
        return (1 + (5 * rank / (size - 1)).map(int)).clip(upper=5)

    active["r"] = score(active["recency"].map(float), best_high=False)
    active["f"] = score(active["orders"], best_high=True)
    active["m"] = score(active["net"].map(float), best_high=True)
    return active


async def test_the_online_retail_replay_through_kafka_matches_pandas(
    platform: dict[str, str],
) -> None:
    assert DATA is not None
    prefix = unique("uci")
    currency = "".join(random.choices(string.ascii_uppercase, k=3))
    events = [_renamed(e, prefix, currency) for e in load_retail(DATA).events]
    publish(platform["CRM_KAFKA_BOOTSTRAP"], events, rate=20_000)
    expected = _expected(DATA)
    assert (len(expected), int(expected["orders"].sum())) == (4_372, 18_536)

    key = create_api_key(platform, "uci-analyst", "customers:read,analytics:read")
    profile = f"http://127.0.0.1:{platform['CRM_PROFILE_API_PORT']}"
    async with (
        httpx.AsyncClient(
            base_url=gateway_url(platform), timeout=30, headers={"Authorization": f"Bearer {key}"}
        ) as gateway,
        httpx.AsyncClient(base_url=profile, timeout=30, headers=service_auth(platform)) as service,
    ):

        async def get(path: str, **params: Any) -> Any:
            """Across customers through the gateway (a few calls, within the key's rate)."""
            answer = await gateway.get(path, params=params)
            assert answer.status_code == 200, answer.text
            return answer.json()

        async def get_customer(path: str) -> Any:
            """Each sampled customer from the profile service itself: hundreds of calls."""
            answer = await service.get(path)
            assert answer.status_code == 200, answer.text
            return answer.json()

        net_total = sum(expected["net"], Decimal(0))
        cube = await eventually(
            lambda: get("/v1/analytics/cube", currency=currency, by=["month"]),
            lambda found: (
                sum(c["orders"] for c in found["cells"] if c["rolled_up"]) == 18_536
                and Decimal(found["cells"][0]["revenue"]) == net_total
            ),
            within=600,  # a bound on liveness: about 2 min quiet, over 4 on a loaded machine
            what="every order of the file folded",
        )
        (grand,) = [c for c in cube["cells"] if c["rolled_up"] == ["month"]]
        assert (grand["customers"], Decimal(grand["revenue"])) == (4_372, net_total)
        assert net_total.quantize(Decimal("0.01")) == Decimal("8300065.81")  # docs/demo-data.md
        by_month = {c["month"]: Decimal(c["revenue"]) for c in cube["cells"] if not c["rolled_up"]}
        assert by_month == expected.attrs["monthly"]

        sample = random.Random(7).sample(list(expected.index), SAMPLE)
        for customer in sample:
            summary = await get_customer(f"/customers/{prefix}-{customer}/purchases")
            row = expected.loc[customer]
            (mine,) = summary["by_currency"]
            assert (mine["orders"], Decimal(mine["net_revenue"])) == (row["orders"], row["net"])
            assert Decimal(mine["refunded"]) == row["refunded"], customer

        active = expected[expected["orders"] > 0]

        async def scored() -> list[dict[str, Any]]:
            found = []
            for customer in sample:
                if customer in active.index:
                    answer = await service.get(f"/customers/{prefix}-{customer}/rfm")
                    if answer.status_code == 404:  # not scored until the next refresh
                        return []
                    assert answer.status_code == 200, answer.text
                    found += [{"customer": customer, **s} for s in answer.json()["scores"]]
            return found

        scores = await eventually(  # a refresh may have begun before the last orders folded
            scored,
            lambda found: (
                len(found) == sum(c in active.index for c in sample)
                and len({s["as_of"] for s in found}) == 1
                and all(s["frequency"] == active.loc[s["customer"], "orders"] for s in found)
            ),
            within=120,
            what="RFM scores of the sample refreshed against one clock, after every order",
        )
        rfm = _rfm(expected, datetime.fromisoformat(scores[0]["as_of"]))
        for score in scores:
            row = rfm.loc[score["customer"]]
            assert (score["frequency"], Decimal(score["monetary"])) == (row["orders"], row["net"])
            assert Decimal(score["recency_days"]) == row["recency"], score
            assert (score["r"], score["f"], score["m"]) == (row["r"], row["f"], row["m"]), score

        top = await get("/v1/analytics/top-customers", currency=currency, share=str(TOP_SHARE))
        ranked = sorted(active["net"][active["net"] > 0], reverse=True)
        revenue = sum(ranked, Decimal(0))
        running, needed = Decimal(0), 0
        while running < TOP_SHARE * revenue:
            running += ranked[needed]
            needed += 1
        assert (top["customers"], top["active_customers"]) == (needed, len(active))
        assert Decimal(top["revenue"]) == revenue
