"""The segment rule language: a small JSON tree that operators write and the profile service
evaluates. Pure data and validation, no I/O: values are never pasted into SQL (the profile
service compiles a rule into SQL whose every value is a parameter), and a rule is bounded in
size and depth, so any rule that validates is safe to run.

A rule is one node:

- `{"all": [rule, ...]}`, `{"any": [rule, ...]}`, `{"not": rule}` combine rules;
- `{"field": "country", "in": ["France"]}` a profile field (name, email, phone, country, or
  `attributes.<key>`) is one of the values;
- `{"measure": "orders", "currency": "GBP", "channel": "web", "within_days": 90,
  "at_least": 3, "at_most": 10}` a count or amount of what the customer did: `orders` (orders
  not cancelled), `refunds`, `cancellations`, `gross_revenue`, `net_revenue` (a currency is
  required: amounts of different currencies are never added), `days_since_last_purchase`, or
  `complaints` (complaint cases the interaction service announced open, each counted once from
  its first opening: "at least 3 complaints in 90 days");
- `{"bought": {"product_ids": ["85123A"], "description_contains": "heart",
  "categories": ["kitchen"], "within_days": 90}}` an order not cancelled had a line that meets
  every option given: one of these products, a description that contains the text
  (case-insensitive), a product the catalogue (crm.catalogue) puts in one of these categories
  now (a product it has not categorised is in none; "bought category X in the last 90 days");
- `{"rfm": {"currency": "GBP", "segments": ["champions"], "min_r": 4}}` the customer's RFM
  scores in a currency: named segments and score bounds;
- `{"lifetime": {"currency": "GBP", "figure": "churn_probability", "at_least": 0.7}}` a figure
  of the lifetime-value model in use for the customer in a currency: `probability_alive`,
  `churn_probability` (1 - probability_alive), `expected_purchases` or `lifetime_value` (over
  the model's horizon); a customer the model has not scored in that currency has none.

`within_days` and `days_since_last_purchase` read the replayable clock of the customer's
crm.orders partition; before that partition has ticked, no time window holds anything. RFM and
lifetime conditions read what the worker last computed (scores refreshed, model fitted), so
segments using them are evaluated again at every tick.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

MAX_RULE_NODES = 64
"""Most nodes in one rule: each compiles to a join, and the evaluation must stay cheap."""
MAX_RULE_DEPTH = 6
MAX_LIST_ITEMS = 100
MAX_WINDOW_DAYS = 3660

RfmSegmentName = Literal[
    "champions",
    "loyal",
    "potential loyalists",
    "new",
    "promising",
    "need attention",
    "about to sleep",
    "at risk",
    "cannot lose them",
    "hibernating",
    "lost",
]
RFM_SEGMENT_NAMES: tuple[str, ...] = get_args(RfmSegmentName)
"""The named RFM segments (the profile service's analytics.RFM_SEGMENTS; a test keeps them
equal)."""

PROFILE_FIELDS = ("name", "email", "phone", "country")
ATTRIBUTE_PREFIX = "attributes."

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. GBP")]
Text = Annotated[str, Field(min_length=1, max_length=300)]
WindowDays = Annotated[int, Field(ge=1, le=MAX_WINDOW_DAYS)]
Category = Annotated[str, Field(min_length=1, max_length=120, description="A catalogue category")]


class _Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldIn(_Node):
    """A profile field is one of the values (a customer without the field is not)."""

    field: str = Field(description="name, email, phone, country or attributes.<key>")
    in_: tuple[Text, ...] = Field(alias="in", min_length=1, max_length=MAX_LIST_ITEMS)

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("field")
    @classmethod
    def _known_field(cls, name: str) -> str:
        key = name.removeprefix(ATTRIBUTE_PREFIX)
        if name in PROFILE_FIELDS or (name.startswith(ATTRIBUTE_PREFIX) and 0 < len(key) <= 80):
            return name
        raise ValueError(
            f"unknown field {name!r}: use one of {', '.join(PROFILE_FIELDS)}"
            f" or {ATTRIBUTE_PREFIX}<key>"
        )


class Measure(StrEnum):
    ORDERS = "orders"
    REFUNDS = "refunds"
    CANCELLATIONS = "cancellations"
    GROSS_REVENUE = "gross_revenue"
    NET_REVENUE = "net_revenue"
    DAYS_SINCE_LAST_PURCHASE = "days_since_last_purchase"
    COMPLAINTS = "complaints"


MONEY_MEASURES = frozenset({Measure.GROSS_REVENUE, Measure.NET_REVENUE})
ORDER_MEASURES = frozenset(
    {Measure.ORDERS, Measure.GROSS_REVENUE, Measure.NET_REVENUE, Measure.DAYS_SINCE_LAST_PURCHASE}
)
"""Measures over orders, which have a channel."""
COUNTS_WITHOUT_CURRENCY = frozenset({Measure.CANCELLATIONS, Measure.COMPLAINTS})


Bound = Annotated[Decimal, Field(ge=0, le=Decimal("1e15"))]


def _check_bounds(at_least: Decimal | None, at_most: Decimal | None) -> None:
    """Bounds (inclusive) that some value could meet: at least one, the lower not above."""
    if at_least is None and at_most is None:
        raise ValueError("give at_least, at_most or both")
    if at_least is not None and at_most is not None and at_least > at_most:
        raise ValueError("at_least is above at_most: no customer could match")


class MeasureBetween(_Node):
    """A count, an amount or a recency in days is within bounds (inclusive)."""

    measure: Measure
    currency: Currency | None = None
    channel: Annotated[str, Field(min_length=1, max_length=40)] | None = None
    within_days: WindowDays | None = None
    at_least: Bound | None = None
    at_most: Bound | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MeasureBetween:
        _check_bounds(self.at_least, self.at_most)
        if self.measure in MONEY_MEASURES and self.currency is None:
            raise ValueError(f"{self.measure} needs a currency: amounts are never mixed")
        if self.measure in COUNTS_WITHOUT_CURRENCY and self.currency is not None:
            raise ValueError(f"{self.measure} have no currency")
        if self.channel is not None and self.measure not in ORDER_MEASURES:
            raise ValueError(f"{self.measure} has no channel")
        if self.measure == Measure.DAYS_SINCE_LAST_PURCHASE and self.within_days is not None:
            raise ValueError("days_since_last_purchase takes no within_days")
        return self


class BoughtSpec(_Node):
    product_ids: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] | None = Field(
        default=None, min_length=1, max_length=MAX_LIST_ITEMS
    )
    description_contains: Text | None = None
    categories: tuple[Category, ...] | None = Field(
        default=None, min_length=1, max_length=MAX_LIST_ITEMS
    )
    within_days: WindowDays | None = None

    @model_validator(mode="after")
    def _something_bought(self) -> BoughtSpec:
        if self.product_ids is None and self.description_contains is None and not self.categories:
            raise ValueError("give product_ids, description_contains, categories or several")
        return self


class Bought(_Node):
    """An order that is not cancelled had a line of these products (descriptions, categories)."""

    bought: BoughtSpec


Score = Annotated[int, Field(ge=1, le=5)]


class RfmSpec(_Node):
    currency: Currency
    segments: tuple[RfmSegmentName, ...] | None = Field(default=None, min_length=1)
    min_r: Score = 1
    max_r: Score = 5
    min_f: Score = 1
    max_f: Score = 5
    min_m: Score = 1
    max_m: Score = 5


class Rfm(_Node):
    """The customer's RFM scores in a currency (as last refreshed) are in the bounds and, when
    segments are given, make one of the named segments."""

    rfm: RfmSpec


class LifetimeFigure(StrEnum):
    PROBABILITY_ALIVE = "probability_alive"
    CHURN_PROBABILITY = "churn_probability"
    EXPECTED_PURCHASES = "expected_purchases"
    LIFETIME_VALUE = "lifetime_value"


PROBABILITIES = frozenset({LifetimeFigure.PROBABILITY_ALIVE, LifetimeFigure.CHURN_PROBABILITY})


class LifetimeSpec(_Node):
    currency: Currency
    figure: LifetimeFigure
    at_least: Bound | None = None
    at_most: Bound | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LifetimeSpec:
        _check_bounds(self.at_least, self.at_most)
        if self.figure in PROBABILITIES and any(
            bound is not None and bound > 1 for bound in (self.at_least, self.at_most)
        ):
            raise ValueError(f"{self.figure} is a probability: bounds from 0 to 1")
        return self


class Lifetime(_Node):
    """A figure of the lifetime-value model in use for the customer in a currency (as last
    fitted) is within bounds (inclusive)."""

    lifetime: LifetimeSpec


class AllOf(_Node):
    all: tuple[Rule, ...] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class AnyOf(_Node):
    any: tuple[Rule, ...] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class NotRule(_Node):
    not_: Rule = Field(alias="not")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


_TAGS = ("all", "any", "not", "field", "measure", "bought", "rfm", "lifetime")


def _tag_of(node: Any) -> str | None:
    """Which kind of node a document is: its first known key."""
    if isinstance(node, dict):
        return next((key for key in node if key in _TAGS), None)
    if isinstance(node, _Node):
        return {
            AllOf: "all",
            AnyOf: "any",
            NotRule: "not",
            FieldIn: "field",
            MeasureBetween: "measure",
            Bought: "bought",
            Rfm: "rfm",
            Lifetime: "lifetime",
        }.get(type(node))
    return None


Rule = Annotated[
    Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[NotRule, Tag("not")]
    | Annotated[FieldIn, Tag("field")]
    | Annotated[MeasureBetween, Tag("measure")]
    | Annotated[Bought, Tag("bought")]
    | Annotated[Rfm, Tag("rfm")]
    | Annotated[Lifetime, Tag("lifetime")],
    Discriminator(
        _tag_of,
        custom_error_type="unknown_rule",
        custom_error_message=f"a rule is an object with one of the keys {', '.join(_TAGS)}",
    ),
]

for _model in (AllOf, AnyOf, NotRule):
    _model.model_rebuild()


def children(rule: Rule) -> tuple[Rule, ...]:
    """The rules a combinator combines (none for a condition)."""
    if isinstance(rule, AllOf):
        return rule.all
    if isinstance(rule, AnyOf):
        return rule.any
    if isinstance(rule, NotRule):
        return (rule.not_,)
    return ()


def check_size(rule: Rule) -> None:
    """Refuse a rule deeper than MAX_RULE_DEPTH or with more than MAX_RULE_NODES nodes."""
    count = 0
    stack: list[tuple[Rule, int]] = [(rule, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_RULE_DEPTH:
            raise ValueError(f"the rule nests deeper than {MAX_RULE_DEPTH} levels")
        if count > MAX_RULE_NODES:
            raise ValueError(f"the rule has more than {MAX_RULE_NODES} nodes")
        stack.extend((child, depth + 1) for child in children(node))


def is_time_dependent(rule: Rule) -> bool:
    """Whether the rule can change with time alone (a window, a recency, the RFM scores, the
    lifetime model): such segments are evaluated again when the clock ticks."""
    if isinstance(rule, MeasureBetween):
        return rule.within_days is not None or rule.measure == Measure.DAYS_SINCE_LAST_PURCHASE
    if isinstance(rule, Bought):
        return rule.bought.within_days is not None
    if isinstance(rule, Rfm | Lifetime):
        return True
    return any(is_time_dependent(child) for child in children(rule))
