"""The UCI Online Retail invoices (real, dirty) turned into CRM events or dead letters.

Pure functions: the only I/O is `read_rows`, which reads the gzipped CSV. Every one of the
541,909 lines ends up either in an order, in a refund, or in a dead letter that says why, so
the demo shows what the platform refuses as well as what it folds. Event ids are derived from
the data (`order-536365`, `customer-17850`), so loading the file twice is idempotent.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import InvalidEvent, OrderLine, build_event
from crm_shared.ops.demo import event_order

SOURCE = "uci-online-retail"
DEAD_LETTER_TOPIC = "source:online_retail.csv"
DEAD_LETTER_CONSUMER = "demo-loader"
COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
SHOP_TIMEZONE = ZoneInfo("Europe/London")
REGISTERED_BEFORE_FIRST_INVOICE = timedelta(seconds=1)
UNKNOWN_COUNTRIES = frozenset({"", "Unspecified"})
"""Country values that say nothing: they never set or change a customer's country."""
COUNTRY_CODES = {
    "Australia": "AU",
    "Austria": "AT",
    "Bahrain": "BH",
    "Belgium": "BE",
    "Brazil": "BR",
    "Canada": "CA",
    "Cyprus": "CY",
    "Czech Republic": "CZ",
    "Denmark": "DK",
    "EIRE": "IE",
    "Finland": "FI",
    "France": "FR",
    "Germany": "DE",
    "Greece": "GR",
    "Hong Kong": "HK",
    "Iceland": "IS",
    "Israel": "IL",
    "Italy": "IT",
    "Japan": "JP",
    "Lebanon": "LB",
    "Lithuania": "LT",
    "Malta": "MT",
    "Netherlands": "NL",
    "Norway": "NO",
    "Poland": "PL",
    "Portugal": "PT",
    "RSA": "ZA",
    "Saudi Arabia": "SA",
    "Singapore": "SG",
    "Spain": "ES",
    "Sweden": "SE",
    "Switzerland": "CH",
    "USA": "US",
    "United Arab Emirates": "AE",
    "United Kingdom": "GB",
}
"""The file's country names as ISO 3166-1 codes, which an order's `country` carries (trending is
kept per country). "Channel Islands" (Jersey or Guernsey) and "European Community" name no one
country: their orders carry none, like "Unspecified"."""
_PRODUCT_CODE = re.compile(r"^\d{5}")
"""Real products have a five-digit stock code; POST, M, DOT, BANK CHARGES, ... are not goods."""


class Row(NamedTuple):
    """One CSV record as text, with the 1-based file line it starts on (the header is line 1)."""

    line: int
    invoice_no: str
    stock_code: str
    description: str
    quantity: str
    invoice_date: str
    unit_price: str
    customer_id: str
    country: str

    def as_dict(self) -> dict[str, str]:
        """The record as the file had it, keyed by column name: what a dead letter carries."""
        return dict(zip(COLUMNS, self[1:], strict=True))


class RejectionKind(StrEnum):
    """Why source lines could not become an event; the value is the label counted in summaries."""

    BAD_DEBT = "bad-debt adjustment"
    NO_CUSTOMER = "no customer id"
    OTHER_CUSTOMER = "another customer than the invoice's"
    NEGATIVE_QUANTITY = "negative quantity outside a cancellation"
    POSITIVE_CANCELLATION = "positive quantity in a cancellation"
    NEGATIVE_PRICE = "negative unit price"
    UNREADABLE = "unreadable field"
    CONTRACT = "rejected by the event contract"


_EXPLANATIONS = {
    RejectionKind.BAD_DEBT: "a bad-debt adjustment (invoice prefix A), an accounting entry "
    "rather than a purchase or a refund",
    RejectionKind.NO_CUSTOMER: "no CustomerID, so they cannot be attributed to a customer",
    RejectionKind.OTHER_CUSTOMER: "a CustomerID other than the one on the invoice's first "
    "line, so the invoice's owner is ambiguous",
    RejectionKind.NEGATIVE_QUANTITY: "a negative Quantity on an invoice that is not a "
    "cancellation (prefix C): a stock correction, not a sale",
    RejectionKind.POSITIVE_CANCELLATION: "a positive Quantity on a cancellation invoice "
    "(prefix C), so nothing was returned",
    RejectionKind.NEGATIVE_PRICE: "a negative UnitPrice, which no customer pays",
    RejectionKind.UNREADABLE: "a field that cannot be read",
    RejectionKind.CONTRACT: "content the event contract refuses",
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Source lines of one invoice refused for one reason, as one dead letter."""

    letter: DeadLetter
    kind: RejectionKind
    lines: int
    customer_id: str | None
    time: datetime | None
    """The invoice's time (UTC); None when its InvoiceDate is unreadable."""


class CustomerWindow(NamedTuple):
    """When a customer was active: the times of their first and last invoice (UTC)."""

    customer_id: str
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class RetailSummary:
    """Counts to check a load against the data set's known facts."""

    orders: int
    refunds: int
    customers: int
    customer_updates: int
    order_lines: int
    refund_lines: int
    rejected_lines: dict[str, int] = field(default_factory=dict)

    @property
    def lines_accounted(self) -> int:
        """Source lines that became an order line, a refund line or part of a dead letter."""
        return self.order_lines + self.refund_lines + sum(self.rejected_lines.values())


@dataclass(frozen=True, slots=True)
class RetailData:
    """Everything derived from the file.

    `events` are in publishing order (see `event_order`); `rejections` in file order;
    `customers` by first invoice; `products` are the stock codes of real goods, most ordered first.
    """

    events: list[dict[str, Any]]
    rejections: list[Rejection]
    customers: list[CustomerWindow]
    products: list[str]
    summary: RetailSummary


@dataclass(frozen=True, slots=True)
class _Sale:
    """An invoice that became an order or a refund, with what the customer events need."""

    document: dict[str, Any]
    customer_id: str
    time: datetime
    country: str | None


class _Refused(Exception):
    """A line is not usable; carries the kind and, where it helps, which field and why."""

    def __init__(self, kind: RejectionKind, detail: str = "") -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


def read_rows(path: Path) -> Iterator[Row]:
    """Stream the gzipped CSV as rows; a header other than the known columns is an error."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None or tuple(header) != COLUMNS:
            raise ValueError(f"{path}: expected columns {', '.join(COLUMNS)}, found {header}")
        start = reader.line_num + 1
        for values in reader:
            if len(values) != len(COLUMNS):
                raise ValueError(f"{path}:{start}: expected {len(COLUMNS)} fields")
            yield Row(start, *values)
            start = reader.line_num + 1


def load_retail(path: Path) -> RetailData:
    """Read and transform the whole file."""
    return transform(read_rows(path))


def local_to_utc(text: str) -> datetime:
    """An InvoiceDate (UK wall-clock time, `YYYY-MM-DD HH:MM:SS`) as an aware UTC datetime."""
    local = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHOP_TIMEZONE)
    return local.astimezone(UTC)


def transform(rows: Iterable[Row]) -> RetailData:
    """Group lines by invoice (first appearance order) and turn each invoice into events."""
    invoices: dict[str, list[Row]] = {}
    for row in rows:
        invoices.setdefault(row.invoice_no, []).append(row)
    sales: list[_Sale] = []
    rejections: list[Rejection] = []
    for invoice_no, lines in invoices.items():
        sale, refused = _invoice(invoice_no, lines)
        if sale is not None:
            sales.append(sale)
        rejections.extend(refused)
    rejections.sort(key=lambda rejection: rejection.letter.offset)
    customer_events, customers = _customer_events(sales)
    events = sorted([*customer_events, *(sale.document for sale in sales)], key=event_order)
    return RetailData(
        events=events,
        rejections=rejections,
        customers=customers,
        products=_products(sales),
        summary=summarise(events, rejections),
    )


def summarise(events: Iterable[dict[str, Any]], rejections: Iterable[Rejection]) -> RetailSummary:
    """Count what a set of retail events and rejections holds."""
    types: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    for document in events:
        types[document["type"]] += 1
        lines[document["type"]] += len(document["data"].get("lines", ()))
    rejected: Counter[str] = Counter()
    for rejection in rejections:
        rejected[rejection.kind.value] += rejection.lines
    return RetailSummary(
        orders=types["crm.order.placed.v1"],
        refunds=types["crm.order.refunded.v1"],
        customers=types["crm.customer.registered.v1"],
        customer_updates=types["crm.customer.updated.v1"],
        order_lines=lines["crm.order.placed.v1"],
        refund_lines=lines["crm.order.refunded.v1"],
        rejected_lines=dict(rejected.most_common()),
    )


def limit_customers(data: RetailData, count: int) -> RetailData:
    """Keep the first `count` customers by first invoice, their events and their rejections.

    Rejected lines without a customer belong to nobody: those of invoices dated no later than
    the last kept customer's first invoice are kept, so a small demo still shows dead letters.
    """
    kept = data.customers[:count]
    ids = {window.customer_id for window in kept}
    until = kept[-1].first_seen if kept else datetime.min.replace(tzinfo=UTC)

    def belongs(rejection: Rejection) -> bool:
        if rejection.customer_id is not None:
            return rejection.customer_id in ids
        return rejection.time is not None and rejection.time <= until

    events = [document for document in data.events if document["subject"] in ids]
    rejections = [rejection for rejection in data.rejections if belongs(rejection)]
    return RetailData(
        events=events,
        rejections=rejections,
        customers=kept,
        products=data.products,
        summary=summarise(events, rejections),
    )


def _invoice(invoice_no: str, rows: list[Row]) -> tuple[_Sale | None, list[Rejection]]:
    """One invoice: an order (or refund) of its usable lines, and dead letters for the rest."""
    refused: dict[tuple[RejectionKind, str], list[Row]] = {}
    try:
        time = min(local_to_utc(text) for text in {row.invoice_date for row in rows})
    except ValueError:
        refused[RejectionKind.UNREADABLE, "InvoiceDate is not YYYY-MM-DD HH:MM:SS"] = rows
        return None, _rejections(invoice_no, None, refused)
    is_refund = invoice_no.startswith("C")
    owner = next((row for row in rows if row.customer_id.strip()), None)
    customer_id = owner.customer_id.strip() if owner else ""
    country = owner.country if owner and owner.country not in UNKNOWN_COUNTRIES else None
    accepted: list[dict[str, Any]] = []
    accepted_rows: list[Row] = []
    for row in rows:
        try:
            accepted.append(_line(row, customer_id, is_refund=is_refund))
        except _Refused as problem:
            refused.setdefault((problem.kind, problem.detail), []).append(row)
        else:
            accepted_rows.append(row)
    sale = None
    if accepted:  # every accepted line carries the owner's CustomerID
        try:
            sale = _Sale(
                document=_document(
                    invoice_no, customer_id, time, accepted, is_refund=is_refund, country=country
                ),
                customer_id=customer_id,
                time=time,
                country=country,
            )
        except InvalidEvent as error:
            refused[RejectionKind.CONTRACT, str(error)] = accepted_rows
    return sale, _rejections(invoice_no, time, refused)


def _line(row: Row, customer_id: str, *, is_refund: bool) -> dict[str, Any]:
    """The order line a CSV line becomes; raises _Refused with the first rule it breaks."""
    if row.invoice_no.startswith("A"):
        raise _Refused(RejectionKind.BAD_DEBT)
    if not row.customer_id.strip():
        raise _Refused(RejectionKind.NO_CUSTOMER)
    if row.customer_id.strip() != customer_id:
        raise _Refused(RejectionKind.OTHER_CUSTOMER)
    try:
        quantity = int(row.quantity)
    except ValueError:
        raise _Refused(RejectionKind.UNREADABLE, "Quantity is not an integer") from None
    try:
        price = Decimal(row.unit_price)
    except InvalidOperation:
        price = Decimal("NaN")
    if not price.is_finite():
        raise _Refused(RejectionKind.UNREADABLE, "UnitPrice is not a number")
    if is_refund and quantity > 0:
        raise _Refused(RejectionKind.POSITIVE_CANCELLATION)
    if not is_refund and quantity < 0:
        raise _Refused(RejectionKind.NEGATIVE_QUANTITY)
    if price < 0:
        raise _Refused(RejectionKind.NEGATIVE_PRICE)
    line = {
        "product_id": row.stock_code,
        "description": row.description.strip() or None,
        "quantity": -quantity if is_refund else quantity,
        "unit_price": str(price),
    }
    try:
        OrderLine.model_validate(line)
    except ValidationError as error:
        issue = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in issue["loc"])
        raise _Refused(RejectionKind.CONTRACT, f"{where}: {issue['msg']}") from None
    return line


def _document(
    invoice_no: str,
    customer_id: str,
    time: datetime,
    lines: list[dict[str, Any]],
    *,
    is_refund: bool,
    country: str | None,
) -> dict[str, Any]:
    """The validated envelope of an order or a refund, with the country's code when it has one
    (trending counts orders for and refunds against their country); raises InvalidEvent."""
    code = COUNTRY_CODES.get(country or "")
    located = {} if code is None else {"country": code}
    if is_refund:
        data = {
            "refund_id": invoice_no,
            "lines": lines,
            "currency": "GBP",
            "reason": "cancelled",
            **located,
        }
        return build_event(
            "crm.order.refunded.v1",
            customer_id,
            data,
            source=SOURCE,
            time=time,
            event_id=f"refund-{invoice_no}",
        )
    data = {"order_id": invoice_no, "lines": lines, "currency": "GBP", "channel": "web", **located}
    return build_event(
        "crm.order.placed.v1",
        customer_id,
        data,
        source=SOURCE,
        time=time,
        event_id=f"order-{invoice_no}",
    )


def _rejections(
    invoice_no: str, time: datetime | None, refused: dict[tuple[RejectionKind, str], list[Row]]
) -> list[Rejection]:
    """One dead letter per invoice and reason: the rows as JSON, the reason as a sentence."""
    rejections = []
    for (kind, detail), rows in refused.items():
        count = f"{len(rows)} line{'s' if len(rows) != 1 else ''}"
        reason = f"invoice {invoice_no}, {count}: {_EXPLANATIONS[kind]}"
        letter = DeadLetter(
            value=json.dumps([row.as_dict() for row in rows], ensure_ascii=False).encode(),
            key=None,
            reason=f"{reason} ({detail})" if detail else reason,
            topic=DEAD_LETTER_TOPIC,
            partition=-1,
            offset=rows[0].line,
            consumer=DEAD_LETTER_CONSUMER,
        )
        customer_id = rows[0].customer_id.strip() or None
        rejections.append(Rejection(letter, kind, len(rows), customer_id, time))
    return rejections


def _customer_events(sales: list[_Sale]) -> tuple[list[dict[str, Any]], list[CustomerWindow]]:
    """Registration just before each customer's first invoice, an update per country change."""
    by_customer: dict[str, list[_Sale]] = {}
    for sale in sales:
        by_customer.setdefault(sale.customer_id, []).append(sale)
    events: list[dict[str, Any]] = []
    windows: list[CustomerWindow] = []
    for customer_id, own in by_customer.items():
        own.sort(key=lambda sale: sale.time)
        first = own[0]
        registered: dict[str, Any] = {"identifiers": {"uci_customer_id": customer_id}}
        if first.country is not None:
            registered["country"] = first.country
        events.append(
            build_event(
                "crm.customer.registered.v1",
                customer_id,
                registered,
                source=SOURCE,
                time=first.time - REGISTERED_BEFORE_FIRST_INVOICE,
                event_id=f"customer-{customer_id}",
            )
        )
        country = first.country
        for sale in own[1:]:
            if sale.country is None or sale.country == country:
                continue
            country = sale.country
            events.append(
                build_event(
                    "crm.customer.updated.v1",
                    customer_id,
                    {"country": country},
                    source=SOURCE,
                    time=sale.time,
                    event_id=f"customer-{customer_id}-country-{sale.document['id']}",
                )
            )
        windows.append(CustomerWindow(customer_id, first.time, own[-1].time))
    windows.sort(key=lambda window: window.first_seen)
    return events, windows


def _products(sales: list[_Sale]) -> list[str]:
    """Stock codes of real goods that were ordered, most ordered first (ties by code)."""
    counts: Counter[str] = Counter(
        line["product_id"]
        for sale in sales
        if sale.document["type"] == "crm.order.placed.v1"
        for line in sale.document["data"]["lines"]
        if _PRODUCT_CODE.match(line["product_id"])
    )
    return sorted(counts, key=lambda code: (-counts[code], code))
