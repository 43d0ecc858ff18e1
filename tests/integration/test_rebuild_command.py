"""`crm rebuild`: a projection replayed into a shadow schema while the live one serves, compared
table by table, and switched over only when equal, losing no event the live worker applies."""

from __future__ import annotations

import asyncio
import sys
import threading
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from crm_shared.contracts.events import build_event
from crm_shared.ops.demo.workload import Workload
from tests.integration.helpers import eventually, execute, fetch, service_auth, unique
from tests.integration.test_crash_recovery import independent_fold, projections, publish

pytestmark = pytest.mark.integration


async def rebuild(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """The operator's command, run as a process while the test goes on polling."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crm_shared.ops.rebuild",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=300)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _merge(kept: str, other: str, after: dict[str, Any], *, merged: bool) -> dict[str, Any]:
    """A merge (or unmerge) of two records, dated like the event it follows."""
    kind, data = (
        ("crm.customer.merged.v1", {"merged_customer_id": other})
        if merged
        else ("crm.customer.unmerged.v1", {"customer_id": other})
    )
    at = datetime.fromisoformat(str(after["time"]))
    return build_event(kind, kept, data, source="crm-test", time=at + timedelta(seconds=1))


def _catalogued(product: str, category: str, after: dict[str, Any], seconds: int) -> dict[str, Any]:
    """A product's catalogue record, dated `seconds` after the event it follows."""
    data = {"product_id": product, "name": product, "category": category}
    at = datetime.fromisoformat(str(after["time"])) + timedelta(seconds=seconds)
    return build_event(
        "crm.product.catalogued.v1",
        product,
        data | {"price": "1", "available": True},
        source="pim",
        time=at,
    )


async def schemas(dsn: str) -> set[str]:
    rows = await fetch(dsn, "SELECT nspname FROM pg_namespace")
    return {row["nspname"] for row in rows}


async def test_a_rebuild_switches_over_with_every_event_while_the_api_keeps_serving(
    platform: dict[str, str],
) -> None:
    prefix = unique("rebuild-switch")
    workload = Workload(seed=11, customers=60, products=30, prefix=prefix)
    before, during, after = (list(workload.events(n)) for n in (2_000, 1_500, 300))
    # Persons of several records, whose segments the rebuild must derive as the live run did:
    # a merge before, another during the rebuild, and an unmerge of the first during it.
    buyers = sorted({e["subject"] for e in before if e["type"] == "crm.order.placed.v1"})
    before.append(_merge(buyers[0], buyers[1], before[-1], merged=True))
    during[500:500] = [
        _merge(buyers[2], buyers[3], during[499], merged=True),
        _merge(buyers[0], buyers[1], during[499], merged=False),
    ]
    # A product bought, catalogued before and reclassified during the rebuild (a later record
    # first, then a late, older one): the rebuilt categories must be the live ones.
    product = next(e for e in before if e["type"] == "crm.order.placed.v1")["data"]["lines"][0]
    product_id = product["product_id"]
    listed = before[-1]
    before.append(_catalogued(product_id, "kitchen", listed, 0))
    during[700:700] = [
        _catalogued(product_id, "garden", listed, 2),
        _catalogued(product_id, "toys", listed, 1),
    ]
    bootstrap, base = platform["CRM_KAFKA_BOOTSTRAP"], platform["CRM_PG_DSN_BASE"]
    profile_db = f"{base}/crm_profile"

    async def totals() -> dict[str, tuple[Any, ...]]:
        return (await projections(base, prefix))["totals"]

    publish(bootstrap, before, rate=10_000)
    first = independent_fold(before)["totals"]
    await eventually(totals, lambda found: found == first, what="the live fold")
    buyer = sorted(first)[0]
    url = f"http://127.0.0.1:{platform['CRM_PROFILE_API_PORT']}/customers/{buyer}"
    answers: list[int | str] = []
    polling = True

    async def read_throughout() -> None:
        async with httpx.AsyncClient(timeout=5, headers=service_auth(platform)) as client:
            while polling:
                try:
                    answers.append((await client.get(url)).status_code)
                except httpx.HTTPError as error:
                    answers.append(repr(error))
                await asyncio.sleep(0.02)

    reader = asyncio.create_task(read_throughout())
    publisher = threading.Thread(target=publish, args=(bootstrap, during, 400))
    publisher.start()
    try:
        await asyncio.sleep(1)
        code, out, err = await rebuild(platform, "profile")
    finally:
        publisher.join()
    publish(bootstrap, after, rate=10_000)  # folded by the live worker into the new tables
    expected = independent_fold(before + during + after)["totals"]
    found = await eventually(totals, lambda f: f == expected, within=120, what="every event")
    polling = False
    await reader

    assert code == 0, out + err
    assert "switched" in out and "records/s" in out
    # Unforced: the positions and every table equal the live ones (folds do not depend on the
    # batch boundaries, and the shadow caught up exactly).
    assert "differs:" not in out, out
    assert found == expected
    assert answers and set(answers) == {200}, [a for a in answers if a != 200][:5]
    persons = await fetch(
        profile_db,
        "SELECT record_id, person_id FROM person_records WHERE record_id = ANY($1::text[])",
        buyers[:4],
    )
    assert dict(persons) == {buyers[2]: buyers[2], buyers[3]: buyers[2]}  # the rebuilt map
    categories = await fetch(
        profile_db, "SELECT category FROM product_categories WHERE product_id = $1", product_id
    )
    assert [row["category"] for row in categories] == ["garden"]
    assert any(name.startswith("retired_") for name in await schemas(profile_db))
    assert "rebuild_shadow" not in await schemas(profile_db)


async def test_a_tampered_live_table_is_reported_and_nothing_switches(
    platform: dict[str, str],
) -> None:
    prefix = unique("rebuild-diff")
    events = list(Workload(seed=12, customers=20, products=10, prefix=prefix).events(300))
    base = platform["CRM_PG_DSN_BASE"]
    profile_db = f"{base}/crm_profile"
    expected = independent_fold(events)["totals"]
    publish(platform["CRM_KAFKA_BOOTSTRAP"], events, rate=10_000)

    async def totals() -> dict[str, tuple[Any, ...]]:
        return (await projections(base, prefix))["totals"]

    await eventually(totals, lambda found: found == expected, what="the live fold")
    victim = sorted(expected)[0]
    tamper = f"UPDATE purchase_totals SET orders = orders + 1 WHERE customer_id = '{victim}'"
    await execute(profile_db, tamper)
    retired_before = {s for s in await schemas(profile_db) if s.startswith("retired_")}
    try:
        code, out, err = await rebuild(platform, "profile")
        tampered = (await totals())[victim]
    finally:
        restore = f"UPDATE purchase_totals SET orders = orders - 1 WHERE customer_id = '{victim}'"
        await execute(profile_db, restore)

    assert code == 1, out + err
    assert "differs: purchase_totals: checksums differ" in out
    assert "NOT switched" in out
    assert tampered[0] == expected[victim][0] + 1  # the live table was left as it was
    assert {s for s in await schemas(profile_db) if s.startswith("retired_")} == retired_before


async def test_a_recommendation_rebuild_switches_and_keeps_what_its_jobs_computed(
    platform: dict[str, str],
) -> None:
    """The recommendation projection's jobs (neighbours, picks, the model) write tables a replay
    does not: the rebuild compares what the folds write and carries what the jobs wrote."""
    prefix = unique("rebuild-reco")
    events = list(Workload(seed=13, customers=40, products=15, prefix=prefix).events(800))
    expected = independent_fold(events)
    base = platform["CRM_PG_DSN_BASE"]
    publish(platform["CRM_KAFKA_BOOTSTRAP"], events, rate=10_000)

    def settled(found: dict[str, Any]) -> bool:
        return found["similar"] == expected["similar"] and found["products"] == expected["products"]

    await eventually(lambda: projections(base, prefix), settled, within=120, what="the jobs")
    database = f"{base}/crm_recommendation"
    served = "SELECT version FROM current_model"
    await eventually(lambda: fetch(database, served), bool, within=120, what="a trained model")
    version = (await fetch(database, served))[0]["version"]
    code, out, err = await rebuild(platform, "recommendation")

    assert code == 0, out + err
    assert "switched" in out and "differs:" not in out, out
    found = await projections(base, prefix)  # the neighbour lists carried, not waiting for a run
    assert found["similar"] == expected["similar"]
    assert (await fetch(database, served))[0]["version"] >= version  # the model carried
    next_version = await fetch(database, "SELECT nextval('model_version') AS n")
    assert next_version[0]["n"] > version  # a later training does not take a carried number
    assert "rebuild_shadow" not in await schemas(database)
