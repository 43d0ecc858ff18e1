"""The UCI retail loader: hand-made rows for each rule, then the real file against its facts."""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from crm_shared.contracts.events import OrderPlaced, OrderRefunded, validate_event
from crm_shared.ops.demo import event_order
from crm_shared.ops.demo.retail import (
    COLUMNS,
    COUNTRY_CODES,
    RejectionKind,
    RetailData,
    Row,
    limit_customers,
    load_retail,
    local_to_utc,
    read_rows,
    transform,
)
from tests.uci_data import DATA, real_file

_lines = iter(range(2, 10_000))


def row(
    invoice: str = "536365",
    stock: str = "85123A",
    quantity: str = "6",
    price: str = "2.55",
    customer: str = "17850",
    *,
    date: str = "2010-12-01 08:26:00",
    country: str = "United Kingdom",
    description: str = "WHITE HANGING HEART T-LIGHT HOLDER",
) -> Row:
    return Row(next(_lines), invoice, stock, description, quantity, date, price, customer, country)


def of_type(data: RetailData, event_type: str) -> list[dict[str, Any]]:
    return [document for document in data.events if document["type"] == event_type]


# --- hand-made rows, one rule each -------------------------------------------------------------


def test_an_invoice_becomes_one_order_at_uk_time_with_a_deterministic_id() -> None:
    data = transform([row(), row(stock="71053", price="3.39"), row(invoice="536366")])
    orders = of_type(data, "crm.order.placed.v1")
    assert [order["id"] for order in orders] == ["order-536365", "order-536366"]
    first = orders[0]
    assert first["source"] == "uci-online-retail"
    assert first["subject"] == "17850"
    assert first["time"] == "2010-12-01T08:26:00+00:00"  # GMT in winter
    assert first["data"]["channel"] == "web"
    assert first["data"]["lines"][1] == {
        "product_id": "71053",
        "description": "WHITE HANGING HEART T-LIGHT HOLDER",
        "quantity": 6,
        "unit_price": "3.39",
    }
    assert transform([row(), row(stock="71053", price="3.39"), row(invoice="536366")]) == data


def test_summer_invoice_dates_are_british_summer_time() -> None:
    assert local_to_utc("2011-06-01 10:00:00") == datetime(2011, 6, 1, 9, 0, tzinfo=UTC)
    assert local_to_utc("2011-01-01 10:00:00") == datetime(2011, 1, 1, 10, 0, tzinfo=UTC)


def test_free_items_and_exact_duplicates_are_kept_as_lines() -> None:
    data = transform([row(), row(), row(stock="22139", price="0.0", description="")])
    (order,) = of_type(data, "crm.order.placed.v1")
    lines = order["data"]["lines"]
    assert len(lines) == 3
    assert lines[0] == lines[1]
    assert lines[2]["unit_price"] == "0.0"
    assert lines[2]["description"] is None
    placed = validate_event(order).data
    assert isinstance(placed, OrderPlaced)
    assert placed.total == Decimal("30.60")


def test_a_cancellation_becomes_a_refund_with_positive_quantities() -> None:
    data = transform([row(invoice="C536379", stock="D", quantity="-2", price="27.50")])
    (refund,) = of_type(data, "crm.order.refunded.v1")
    assert refund["id"] == "refund-C536379"
    assert refund["data"]["refund_id"] == "C536379"
    assert refund["data"]["reason"] == "cancelled"
    assert refund["data"]["lines"][0]["quantity"] == 2
    assert data.summary.refunds == 1
    assert data.summary.refund_lines == 1


def test_lines_without_customer_become_one_dead_letter_per_invoice_with_a_count() -> None:
    rows = [row(invoice="536544", customer=""), row(invoice="536544", customer="")]
    (rejection,) = transform(rows).rejections
    letter = rejection.letter
    assert rejection.kind is RejectionKind.NO_CUSTOMER
    assert letter.reason.startswith("invoice 536544, 2 lines: no CustomerID")
    assert json.loads(letter.value) == [r.as_dict() for r in rows]
    assert letter.key is None
    assert (letter.topic, letter.partition, letter.offset) == (
        "source:online_retail.csv",
        -1,
        rows[0].line,
    )
    assert letter.consumer == "demo-loader"


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        (row(quantity="-3"), RejectionKind.NEGATIVE_QUANTITY),
        (row(price="-1.00"), RejectionKind.NEGATIVE_PRICE),
        (row(customer="12346"), RejectionKind.OTHER_CUSTOMER),
        (row(quantity="six"), RejectionKind.UNREADABLE),
        (row(price="n/a"), RejectionKind.UNREADABLE),
        (row(quantity="0"), RejectionKind.CONTRACT),
        (row(stock="X" * 65), RejectionKind.CONTRACT),
    ],
)
def test_a_bad_line_is_dead_lettered_and_the_rest_of_the_invoice_is_kept(
    bad: Row, kind: RejectionKind
) -> None:
    data = transform([row(), bad])
    (order,) = of_type(data, "crm.order.placed.v1")
    assert len(order["data"]["lines"]) == 1
    (rejection,) = data.rejections
    assert rejection.kind is kind
    assert "1 line:" in rejection.letter.reason
    assert data.summary.lines_accounted == 2


def test_a_positive_quantity_on_a_cancellation_is_dead_lettered() -> None:
    data = transform([row(invoice="C1", quantity="-1"), row(invoice="C1", quantity="1")])
    assert len(of_type(data, "crm.order.refunded.v1")) == 1
    assert [r.kind for r in data.rejections] == [RejectionKind.POSITIVE_CANCELLATION]


def test_bad_debt_adjustments_are_dead_lettered() -> None:
    data = transform([row(invoice="A563186", stock="B", price="-11062.06", customer="")])
    assert data.events == []
    assert [r.kind for r in data.rejections] == [RejectionKind.BAD_DEBT]
    assert data.summary.rejected_lines == {"bad-debt adjustment": 1}


def test_what_build_event_refuses_dead_letters_the_whole_invoice_with_its_reason() -> None:
    data = transform([row(customer="17 850"), row(customer="17 850")])
    assert data.events == []
    (rejection,) = data.rejections
    assert rejection.kind is RejectionKind.CONTRACT
    assert "2 lines" in rejection.letter.reason
    assert "subject" in rejection.letter.reason


def test_an_unreadable_date_dead_letters_the_invoice() -> None:
    (rejection,) = transform([row(date="01/12/2010 08:26")]).rejections
    assert rejection.kind is RejectionKind.UNREADABLE
    assert "InvoiceDate" in rejection.letter.reason


def test_an_invoice_split_across_the_file_is_one_order() -> None:
    data = transform([row(invoice="1"), row(invoice="2"), row(invoice="1", stock="22423")])
    assert [len(o["data"]["lines"]) for o in of_type(data, "crm.order.placed.v1")] == [2, 1]


def test_customers_are_registered_before_their_first_invoice_and_follow_country_changes() -> None:
    data = transform(
        [
            row(invoice="1", customer="12431", country="Australia", date="2010-12-01 09:00:00"),
            row(
                invoice="C2",
                customer="12431",
                quantity="-1",
                country="Australia",
                date="2010-12-01 08:00:00",
            ),
            row(invoice="3", customer="12431", country="Belgium", date="2010-12-02 09:00:00"),
            row(invoice="4", customer="12431", country="Unspecified", date="2010-12-03 09:00:00"),
            row(invoice="5", customer="17850", date="2010-12-02 09:00:00"),
        ]
    )
    assert [(d["type"], d["subject"], d["time"][:19]) for d in data.events] == [
        ("crm.customer.registered.v1", "12431", "2010-12-01T07:59:59"),
        ("crm.order.refunded.v1", "12431", "2010-12-01T08:00:00"),  # the refund came first
        ("crm.order.placed.v1", "12431", "2010-12-01T09:00:00"),
        ("crm.customer.registered.v1", "17850", "2010-12-02T08:59:59"),
        ("crm.customer.updated.v1", "12431", "2010-12-02T09:00:00"),  # before the order
        ("crm.order.placed.v1", "12431", "2010-12-02T09:00:00"),
        ("crm.order.placed.v1", "17850", "2010-12-02T09:00:00"),
        ("crm.order.placed.v1", "12431", "2010-12-03T09:00:00"),  # Unspecified: no update
    ]
    registered = data.events[0]
    assert registered["id"] == "customer-12431"
    assert registered["data"] == {
        "identifiers": {"uci_customer_id": "12431"},
        "country": "Australia",
    }
    update = data.events[4]
    assert update["data"]["country"] == "Belgium"
    assert update["id"] == "customer-12431-country-order-3"
    assert [w.customer_id for w in data.customers] == ["12431", "17850"]
    assert data.customers[0].first_seen == datetime(2010, 12, 1, 8, 0, tzinfo=UTC)
    assert data.customers[0].last_seen == datetime(2010, 12, 3, 9, 0, tzinfo=UTC)
    assert data.summary.customer_updates == 1


def test_orders_and_refunds_carry_their_invoice_country_as_an_iso_code_when_it_names_one() -> None:
    data = transform(
        [
            row(invoice="1", country="EIRE"),
            row(invoice="2", country="RSA"),
            row(invoice="3", country="Channel Islands"),
            row(invoice="4", country="Unspecified"),
            row(invoice="C5", quantity="-1", country="France"),
        ]
    )
    orders = of_type(data, "crm.order.placed.v1")
    assert [order["data"].get("country") for order in orders] == ["IE", "ZA", None, None]
    (refund,) = of_type(data, "crm.order.refunded.v1")
    assert refund["data"]["country"] == "FR"  # trending counts it against France


def test_limit_keeps_the_first_customers_with_their_events_and_rejections() -> None:
    data = transform(
        [
            row(invoice="1", customer="2", date="2010-12-02 09:00:00"),
            row(invoice="2", customer="1", date="2010-12-01 09:00:00"),
            row(invoice="2", customer="1", quantity="-1"),
            row(invoice="3", customer="", date="2010-12-01 08:00:00"),
            row(invoice="4", customer="", date="2010-12-01 10:00:00"),
        ]
    )
    small = limit_customers(data, 1)
    assert {d["subject"] for d in small.events} == {"1"}
    assert [r.letter.reason[:9] for r in small.rejections] == ["invoice 2", "invoice 3"]
    assert small.summary.orders == 1
    assert small.products == data.products
    assert len(limit_customers(data, 2).rejections) == 3


def test_products_are_real_goods_most_ordered_first() -> None:
    data = transform(
        [
            row(stock="22423"),
            row(stock="85123A"),
            row(invoice="2", stock="85123A"),
            row(invoice="2", stock="POST"),
        ]
    )
    assert data.products == ["85123A", "22423"]


def test_read_rows_numbers_lines_and_checks_the_header(tmp_path: Path) -> None:
    path = tmp_path / "retail.csv.gz"
    with gzip.open(path, "wt", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        writer.writerow(
            [
                "536365",
                "85123A",
                "A\nTWO-LINE NAME",
                "6",
                "2010-12-01 08:26:00",
                "2.55",
                "17850",
                "United Kingdom",
            ]
        )
        writer.writerow(
            [
                "536365",
                "71053",
                "LANTERN",
                "6",
                "2010-12-01 08:26:00",
                "3.39",
                "17850",
                "United Kingdom",
            ]
        )
    assert [r.line for r in read_rows(path)] == [2, 4]
    bad = tmp_path / "bad.csv.gz"
    with gzip.open(bad, "wt") as file:
        file.write("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected columns"):
        list(read_rows(bad))


# --- the real file against the facts in shared/data/README.md ---------------------------------


@pytest.fixture(scope="module")
def full() -> RetailData:
    assert DATA is not None
    return load_retail(DATA)


class Plain(NamedTuple):
    rows: int
    orders: int
    refunds: int
    order_revenue: Decimal
    refund_revenue: Decimal


@pytest.fixture(scope="module")
def plain() -> Plain:
    """The same facts computed with a plain loop over the CSV, sharing no code with the loader."""
    assert DATA is not None
    orders: set[str] = set()
    refunds: set[str] = set()
    order_revenue = refund_revenue = Decimal(0)
    rows = 0
    with gzip.open(DATA, "rt", encoding="utf-8", newline="") as file:
        for record in csv.DictReader(file):
            rows += 1
            if not record["CustomerID"]:
                continue
            amount = int(record["Quantity"]) * Decimal(record["UnitPrice"])
            if record["InvoiceNo"].startswith("C"):
                refunds.add(record["InvoiceNo"])
                refund_revenue -= amount
            else:
                orders.add(record["InvoiceNo"])
                order_revenue += amount
    return Plain(rows, len(orders), len(refunds), order_revenue, refund_revenue)


@real_file
def test_every_line_of_the_file_is_accounted_for(full: RetailData, plain: Plain) -> None:
    assert plain.rows == 541_909
    assert full.summary.lines_accounted == 541_909
    assert full.summary.rejected_lines == {"no customer id": 135_077, "bad-debt adjustment": 3}
    assert sum(full.summary.rejected_lines.values()) == 135_080  # rows without CustomerID


@real_file
def test_orders_refunds_and_customers_match_the_data_set(full: RetailData, plain: Plain) -> None:
    summary = full.summary
    assert (summary.orders, summary.refunds) == (plain.orders, plain.refunds)
    assert (summary.orders, summary.refunds) == (18_536, 3_654)
    assert summary.customers == len(full.customers) == 4_372
    assert summary.order_lines == 397_884 + 40  # priced lines + free items
    buyers = {d["subject"] for d in full.events if d["type"] == "crm.order.placed.v1"}
    assert len(buyers) == 4_339  # README: customers when zero-price lines count


@real_file
def test_revenue_of_orders_and_refunds_matches_an_independent_sum(
    full: RetailData, plain: Plain
) -> None:
    orders = refunds = Decimal(0)
    for document in full.events:
        data = validate_event(document).data
        if isinstance(data, OrderPlaced):
            orders += data.total
        elif isinstance(data, OrderRefunded):
            refunds += data.total
    assert round(orders, 2) == Decimal("8911407.90")  # README: the clean rows' revenue
    assert (orders, refunds) == (plain.order_revenue, plain.refund_revenue)
    assert orders - refunds == plain.order_revenue - plain.refund_revenue


@real_file
def test_events_are_in_publishing_order_with_unique_ids(full: RetailData) -> None:
    keys = [event_order(document) for document in full.events]
    assert keys == sorted(keys)
    assert len({document["id"] for document in full.events}) == len(full.events)
    registered: set[str] = set()
    for document in full.events:
        if document["type"] == "crm.customer.registered.v1":
            registered.add(document["subject"])
        assert document["subject"] in registered


@real_file
def test_multi_country_customers_get_updates(full: RetailData) -> None:
    updated = Counter(d["subject"] for d in full.events if d["type"] == "crm.customer.updated.v1")
    assert len(updated) == 8
    assert updated["12394"] == 1  # Belgium, then Denmark


@real_file
def test_every_named_country_of_the_file_has_a_code(full: RetailData) -> None:
    orders = [d["data"] for d in full.events if d["type"] == "crm.order.placed.v1"]
    countries = Counter(order.get("country") for order in orders)
    # Hong Kong's lines name no customer, so none of them becomes an order.
    assert set(countries) - {None} == set(COUNTRY_CODES.values()) - {"HK"}
    assert countries["GB"] > 0.85 * len(orders)  # a British shop, as the file says
