"""The gateway's OpenAPI document says what the gateway does: schemathesis sends requests made from
the document to the running gateway and checks every answer against it.

Checks: no server error (503/504 would mean a service is down, and none is), every status is one
the document lists for the operation, every body matches its schema, and no request the
document allows is refused as invalid. Customers that schemathesis makes up are unknown: 404,
which the document lists; so that the answers about a known customer are checked too, about
half of the generated customer ids are replaced by one that every service knows.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from crm_shared.contracts.events import build_event
from gateway_service.api import TIMELINE_CURSOR_FORMAT, create_app
from gateway_service.config import GatewaySettings
from interaction_service.projection import (
    PageCursor,
    TimelinePosition,
    TimelineQuery,
    encode_cursor,
)
from tests.integration.helpers import create_api_key, eventually, gateway_url, unique

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]

SOURCE = "openapi"
KNOWN_CUSTOMER = unique("openapi")

# A cursor is valid only as a previous page's next_cursor; the document says so with its format,
# and here is how such cursors are made: from positions a stored row could have (UTC times, text
# without NUL, which PostgreSQL cannot hold), for an unfiltered read as of some instant (with
# other filters the answer is a documented 400).
stored_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
issued_cursors = st.builds(
    PageCursor,
    st.builds(TimelinePosition, st.datetimes(timezones=st.just(UTC)), stored_text, stored_text),
    st.just(TimelineQuery().fingerprint()),
    st.datetimes(timezones=st.just(UTC)),
).map(encode_cursor)
schemathesis.openapi.format(TIMELINE_CURSOR_FORMAT, issued_cursors)


# The document is built by the gateway's own factory (without starting it): schemathesis needs it
# when tests are collected, before the platform runs. The first test proves the running gateway
# serves this very document.
DOCUMENT = create_app(GatewaySettings()).openapi()
# Defining a segment is left out: its body is a recursive rule tree, of which hypothesis draws
# thousands of examples before it has the 40 it counts (minutes of requests answered 403, as
# this key cannot define segments); tests/integration/test_operator_segments.py covers the
# route, and tests/unit/test_segment_rules.py the rule language.
gateway = schemathesis.openapi.from_dict(DOCUMENT).exclude(method="POST", path="/v1/segments")
PACE_SECONDS = 1 / GatewaySettings().rate_per_second
"""Stay under the key's rate limit, so that every answer is the operation's own, not a 429."""


@gateway.hook
def before_generate_path_parameters(
    context: schemathesis.HookContext, strategy: SearchStrategy[dict[str, Any]]
) -> SearchStrategy[dict[str, Any]]:
    if context.operation is None or "{customer_id}" not in context.operation.path:
        return strategy
    return st.one_of(strategy, strategy.map(_about_the_known_customer))


def _about_the_known_customer(generated: Any) -> dict[str, Any]:
    """Generated path parameters (a mapping, or schemathesis' wrapper of one) with the known
    customer's id, the others as generated (e.g. the record to unmerge)."""
    return {**getattr(generated, "value", generated), "customer_id": KNOWN_CUSTOMER}


@pytest.fixture(scope="module")
def key_headers(platform: dict[str, str]) -> dict[str, str]:
    key = create_api_key(
        platform,
        "openapi",
        "customers:read,events:write,analytics:read,recommendations:read,experience:read,"
        "preferences:read",
        SOURCE,
    )
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
async def known_customer(platform: dict[str, str], key_headers: dict[str, str]) -> str:
    """KNOWN_CUSTOMER, registered, with a contact and a channel preference, in every service."""
    now = datetime.now(UTC)
    facts = [
        ("crm.customer.registered.v1", {"name": "Ada"}),
        (
            "crm.contact.logged.v1",
            {
                "channel": "chat",
                "direction": "inbound",
                "department": "support",
                "topic": "returns",
                "outcome": "resolved",
            },
        ),
        ("crm.channel_preference.set.v1", {"channels": ["email"]}),
    ]
    events = [
        build_event(
            event_type,
            KNOWN_CUSTOMER,
            data,
            source=SOURCE,
            time=now - timedelta(minutes=len(facts) - n),
            event_id=f"{KNOWN_CUSTOMER}-{n}",
        )
        for n, (event_type, data) in enumerate(facts)
    ]
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as client:
        ingested = await client.post("/v1/events", json={"events": events}, headers=key_headers)
        assert ingested.json()["accepted"] == len(events), ingested.text
        await eventually(
            lambda: client.get(f"/v1/customers/{KNOWN_CUSTOMER}", headers=key_headers),
            lambda r: r.status_code == 200 and r.json()["missing"] == [],
            what="every part of the known customer's 360",
        )
    return KNOWN_CUSTOMER


async def test_the_running_gateway_serves_the_document_under_test(
    platform: dict[str, str],
) -> None:
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=10) as client:
        served = await client.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == DOCUMENT
    assert set(DOCUMENT["paths"]) == {
        "/v1/customers/{customer_id}",
        "/v1/customers/{customer_id}/timeline",
        "/v1/events",
        "/v1/customers/{customer_id}/purchases",
        "/v1/customers/{customer_id}/rfm",
        "/v1/analytics/rfm-segments",
        "/v1/analytics/top-customers",
        "/v1/analytics/cube",
        "/v1/customers/{customer_id}/opinions",
        "/v1/analytics/opinions",
        "/v1/customers/{customer_id}/merges",
        "/v1/customers/{customer_id}/merges/{other_customer_id}",
        "/v1/customers/{customer_id}/lifetime-value",
        "/v1/analytics/lifetime-value/model",
        "/v1/analytics/lifetime-value/refits",
        "/v1/customers/{customer_id}/recommendations",
        "/v1/products/popular",
        "/v1/products/{product_id}/similar",
        "/v1/products/{product_id}/also-bought",
        "/v1/products/trending",
        "/v1/recommendations/model",
        "/v1/recommendations/model/retrain",
        "/v1/recommendations/model/retrain/{request_id}",
        "/v1/segments",
        "/v1/segments/{segment}",
        "/v1/segments/{segment}/size",
        "/v1/segments/{segment}/members",
        "/v1/customers/{customer_id}/segments",
        "/v1/customers/{customer_id}/cases",
        "/v1/cases/{case_id}",
        "/v1/departments",
        "/v1/departments/{department}",
        "/v1/customers/{customer_id}/feedback",
        "/v1/customers/{customer_id}/journey",
        "/v1/experience/trends",
        "/v1/experience/dimensions",
        "/v1/journey/stages",
        "/v1/customers/{customer_id}/preferences",
        "/v1/customers/{customer_id}/consent-history",
        "/v1/customers/{customer_id}/contact-decision",
        "/v1/customers/{customer_id}/consents",
        "/v1/customers/{customer_id}/do-not-contact",
        "/v1/campaigns",
        "/v1/campaigns/{campaign_id}",
        "/v1/campaigns/dry-run",
        "/v1/customers/{customer_id}/cases/{case_id}/assign",
        "/v1/customers/{customer_id}/cases/{case_id}/transfer",
        "/v1/customers/{customer_id}/cases/{case_id}/escalate",
        "/v1/customers/{customer_id}/cases/{case_id}/resolve",
        "/v1/customers/{customer_id}/cases/{case_id}/reopen",
        "/v1/customers/{customer_id}/cases/{case_id}/close",
        "/v1/messages/{message_id}/reports",
        "/v1/campaigns/{campaign_id}/delivery",
    }


@gateway.parametrize()
@pytest.mark.usefixtures("known_customer")
@settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_gateway_answers_as_its_openapi_document_says(
    case: schemathesis.Case, platform: dict[str, str], key_headers: dict[str, str]
) -> None:
    time.sleep(PACE_SECONDS)
    case.call_and_validate(
        base_url=gateway_url(platform), headers=key_headers, checks=_checks(case), timeout=30
    )


def _checks(case: schemathesis.Case) -> list[Any]:
    """A timeline cursor is valid only with the filters, order and instant of the read that
    issued it (else a documented 400): a rule across parameters that OpenAPI cannot state, so a
    cursor sent with other parameters is not held to be accepted (its answer is still checked
    against the document)."""
    query = case.query or {}
    other_parameters = set(query) - {"cursor", "limit"}
    if case.operation.path.endswith("/timeline") and "cursor" in query and other_parameters:
        return [check for check in CHECKS if check is not positive_data_acceptance]
    if _breaks_a_rule_across_parameters(case.operation.path, query):
        return [check for check in CHECKS if check is not positive_data_acceptance]
    return CHECKS


def _breaks_a_rule_across_parameters(path: str, query: dict[str, Any]) -> bool:
    """Recommendation rules OpenAPI cannot state either (each a documented 422): trending is
    asked for a country or a segment, not both; a price range must not be empty."""
    if path == "/v1/products/trending":
        return query.get("country") is not None and query.get("segment") is not None
    try:
        low, high = (Decimal(str(query[name])) for name in ("min_price", "max_price"))
    except (KeyError, InvalidOperation):  # absent, or not a price (its 422 is held to be one)
        return False
    return low > high
