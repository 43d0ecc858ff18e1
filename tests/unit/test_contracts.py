"""Models, JSON Schema files and the AsyncAPI document must not drift apart."""

from __future__ import annotations

import json

import jsonschema
import yaml

from crm_shared.contracts.events import CLOCK_TICKED, EVENT_TYPES, build_event
from crm_shared.contracts.generate import ASYNCAPI_FILE, SCHEMA_DIR, drift, message_name
from crm_shared.contracts.topics import ALL_TOPICS, EVENT_TOPICS
from crm_shared.ops import platform


def test_checked_in_contracts_match_the_models() -> None:
    assert drift() == [], "run: uv run python -m crm_shared.contracts.generate --write"


def test_asyncapi_lists_every_topic_and_message() -> None:
    document = yaml.safe_load(ASYNCAPI_FILE.read_text())
    assert document["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {topic.name for topic in ALL_TOPICS}
    assert set(document["components"]["messages"]) == {message_name(t) for t in EVENT_TYPES}
    for channel in document["channels"].values():
        assert channel["x-producers"], f"{channel['address']} names no producer"


def test_schema_files_accept_what_the_models_build_and_refuse_a_wrong_type() -> None:
    sample = build_event(
        "crm.feedback.given.v1", "C-1", {"score": 4, "comment": "quick"}, source="web"
    )
    schema = json.loads((SCHEMA_DIR / "crm.feedback.given.v1.json").read_text())
    jsonschema.validate(sample, schema)
    wrong = {**sample, "type": "crm.order.placed.v1"}
    try:
        jsonschema.validate(wrong, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("the schema accepted an envelope of another type")


def test_each_worker_subscribes_to_exactly_the_topics_the_contract_says_it_consumes() -> None:
    for service in platform.projections():
        projection = service.load_projection()
        declared = {t.name for t in ALL_TOPICS if f"{projection.name}-service" in t.consumers}
        assert {t.name for t in projection.topics} == declared, projection.name
        carried = {CLOCK_TICKED} | {e for t in projection.topics for e in t.event_types}
        assert projection.folds <= carried, f"{projection.name} folds types it never reads"


def test_derived_events_are_published_only_by_the_service_the_contract_names() -> None:
    from profile_service.events import PUBLISHES

    for topic in EVENT_TOPICS:
        assert ("profile-service" in topic.producers) == (topic in PUBLISHES), topic.name


def test_every_event_topic_carries_the_clock_ticks() -> None:
    document = yaml.safe_load(ASYNCAPI_FILE.read_text())
    for channel in document["channels"].values():
        if channel["address"] != "crm.deadletter":
            assert message_name(CLOCK_TICKED) in channel["messages"], channel["address"]
            assert "crm-clock" in channel["x-producers"]
