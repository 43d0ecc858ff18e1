"""Dead letters re-driven once their cause is fixed: the consumer that failed applies the record
once, the consumers that had applied it drop the copy, and `list` shows what is parked."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka import KafkaProducer

from crm_shared.contracts.events import CLOCK_SUBJECT, build_event, encode_event
from crm_shared.contracts.sdk import EventPublisher
from tests.integration.helpers import (
    end_offsets,
    eventually,
    execute,
    fetch,
    read_topic,
    run_module,
    unique,
)

pytestmark = pytest.mark.integration

ORDER_CONSUMERS = {"profile", "interaction", "recommendation"}
BIG_ORDER = 500  # items: over the limit the test's CHECK constraint sets


def redrive(platform: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_module(platform, "crm_shared.ops.redrive", *args)


def json_lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _unknown_type(customer: str, event_id: str, event_type: str) -> bytes:
    """A well-formed envelope of a type no consumer knows: every consumer dead-letters it."""
    document = build_event(
        "crm.order.placed.v1",
        customer,
        {"order_id": event_id, "lines": [{"product_id": "P", "quantity": 1, "unit_price": "1"}]},
        source="test-redrive",
        event_id=event_id,
    )
    return encode_event({**document, "type": event_type})


async def test_a_fixed_record_is_redriven_once_and_counted_once_everywhere(
    platform: dict[str, str],
) -> None:
    bootstrap, base = platform["CRM_KAFKA_BOOTSTRAP"], platform["CRM_PG_DSN_BASE"]
    customer = unique("redrive")
    product = f"{customer}-P"
    constraint = f"{customer.replace('-', '_')}_items"
    weird_type = f"crm.test.{customer.split('-')[1]}.v1"
    profile_db = f"{base}/crm_profile"
    # A fixable cause: the profile refuses this customer's totals past 100 items.
    await execute(
        profile_db,
        f"ALTER TABLE purchase_totals ADD CONSTRAINT {constraint}"
        f" CHECK (customer_id <> '{customer}' OR items < 100)",
    )
    try:
        with EventPublisher(bootstrap, source="test-redrive") as shop:
            for n, quantity in enumerate((1, BIG_ORDER, 1, 1)):
                shop.publish(
                    "crm.order.placed.v1",
                    customer,
                    {
                        "order_id": f"O{n}",
                        "lines": [{"product_id": product, "quantity": quantity, "unit_price": "2"}],
                    },
                    time=datetime(2024, 3, 1, n, tzinfo=UTC),
                    event_id=f"{customer}-{n}",
                )
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for n in (1, 2):
            producer.send(
                "crm.orders",
                key=customer.encode(),
                value=_unknown_type(customer, f"{customer}-w{n}", weird_type),
            )
        producer.flush()
        producer.close()

        async def profile_letters() -> list[dict[str, Any]]:
            return json_lines(
                redrive(platform, "list", "--json", "--consumer", "profile", "--reason", constraint)
            )

        [letter] = await eventually(
            profile_letters, lambda found: len(found) == 1, what="the big order dead-lettered"
        )
        assert letter["reason"].startswith("processing failed: CheckViolationError")
        assert (letter["id"], letter["subject"]) == (f"{customer}-1", customer)
        assert letter["origin"]["topic"] == "crm.orders"  # derived from its type

        async def weird_letters() -> list[dict[str, Any]]:
            return json_lines(redrive(platform, "list", "--json", "--type", weird_type))

        weird = await eventually(
            weird_letters, lambda found: len(found) == 6, what="both unknown types, 3 consumers"
        )
        assert {w["consumer"] for w in weird} == ORDER_CONSUMERS
        assert {(w["subject"], w["origin"]["topic"]) for w in weird} == {(customer, "crm.orders")}
        await eventually(
            lambda: profile_totals(profile_db, customer),
            lambda found: found == (3, 3),
            what="the profile to fold the orders around the big one",
        )
        applied_everywhere = (4, 4, 4, 3 + BIG_ORDER)
        await eventually(
            lambda: order_counts(base, customer, product),
            lambda found: found == applied_everywhere,
            what="interaction and recommendation to fold every order",
        )

        # list: one line per (reason, consumer, type), with its count.
        listing = redrive(platform, "list", "--type", weird_type)
        assert listing.returncode == 0, listing.stderr
        groups = listing.stdout.splitlines()[1:]
        assert len(groups) == 3
        for consumer in ORDER_CONSUMERS:
            line = rf"^\s*2\s+{consumer}\s+{re.escape(weird_type)}\s+unknown event type"
            assert any(re.match(line, group) for group in groups), listing.stdout
        narrowed = redrive(platform, "list", "--type", weird_type, "--consumer", "interaction")
        assert len(narrowed.stdout.splitlines()[1:]) == 1

        # --dry-run: each record once however many consumers refused it, and nothing sent.
        written = end_offsets(bootstrap, "crm.orders")
        planned = redrive(platform, "publish", "--dry-run", "--json", "--type", weird_type)
        assert sorted((p["id"], p["letters"]) for p in json_lines(planned)) == [
            (f"{customer}-w1", 3),
            (f"{customer}-w2", 3),
        ]
        assert "would re-publish 2 records from 6 letters" in planned.stderr
        big_order = redrive(
            platform,
            "publish",
            "--dry-run",
            "--json",
            "--consumer",
            "profile",
            "--reason",
            constraint,
        )
        assert [(p["topic"], p["key"], p["id"]) for p in json_lines(big_order)] == [
            ("crm.orders", customer, f"{customer}-1")
        ]
        sent_since = [
            record
            for record in read_topic(bootstrap, "crm.orders")
            if record.offset >= written[record.partition] and record.key != CLOCK_SUBJECT.encode()
        ]
        assert sent_since == [], "a dry run sends nothing (only the clock ticked meanwhile)"
    finally:
        await execute(
            profile_db, f"ALTER TABLE purchase_totals DROP CONSTRAINT IF EXISTS {constraint}"
        )

    done = redrive(platform, "publish", "--json", "--consumer", "profile", "--reason", constraint)
    [sent] = json_lines(done)
    assert (sent["topic"], sent["id"]) == ("crm.orders", f"{customer}-1")
    assert "re-published 1 records from 1 letters" in done.stderr

    totals = await eventually(
        lambda: profile_totals(profile_db, customer),
        lambda found: found == (4, 3 + BIG_ORDER),
        what="the profile to fold the re-driven order",
    )
    assert totals == (4, 3 + BIG_ORDER)
    for database in ("crm_interaction", "crm_recommendation"):
        await eventually(
            lambda db=database: consumed_up_to(f"{base}/{db}", sent["partition"]),
            lambda next_offset: next_offset > sent["offset"],
            what=f"{database} to read past the re-driven copy",
        )
    assert await order_counts(base, customer, product) == applied_everywhere
    assert len(await profile_letters()) == 1  # it did not fail again


async def profile_totals(dsn: str, customer: str) -> tuple[int, int] | None:
    rows = await fetch(
        dsn, "SELECT orders, items FROM purchase_totals WHERE customer_id = $1", customer
    )
    return (rows[0]["orders"], rows[0]["items"]) if rows else None


async def order_counts(base: str, customer: str, product: str) -> tuple[int, int, int, int]:
    """Orders as interaction (timeline, touchpoints) and recommendation (orders, items) count."""
    [timeline] = await fetch(
        f"{base}/crm_interaction",
        "SELECT count(*) AS n FROM timeline WHERE customer_id = $1 AND kind = 'order'",
        customer,
    )
    summary = await fetch(
        f"{base}/crm_interaction",
        "SELECT touchpoints FROM contact_summary WHERE customer_id = $1",
        customer,
    )
    products = await fetch(
        f"{base}/crm_recommendation",
        "SELECT orders, quantity FROM products WHERE product_id = $1",
        product,
    )
    return (
        timeline["n"],
        summary[0]["touchpoints"] if summary else 0,
        products[0]["orders"] if products else 0,
        products[0]["quantity"] if products else 0,
    )


async def consumed_up_to(dsn: str, partition: int) -> int:
    rows = await fetch(
        dsn,
        "SELECT next_offset FROM consumer_positions WHERE topic = 'crm.orders' AND partition = $1",
        partition,
    )
    return int(rows[0]["next_offset"]) if rows else 0
