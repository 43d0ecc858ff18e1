"""A timeline page and the overview are served as documents of the table's rows, not rebuilt as
validated models (`document_response`): the bytes are those of the models' own serialisation,
because the page's columns are TimelineItem's fields, in order and of its types."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from crm_shared.runtime.http import document_response
from interaction_service import store
from interaction_service.api import InteractionOverview, TimelineItem, TimelinePage, _page, _summary
from interaction_service.projection import ContactTotals, TimelineQuery

AS_OF = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _rows() -> list[dict[str, Any]]:
    """Rows as asyncpg gives them (times in UTC, jsonb decoded), every column set or null."""
    full = (
        "crm-shop", "e1", AS_OF - timedelta(days=1), AS_OF, "contact", "crm.contact.logged.v2",
        "phone", "inbound", "support", "agent-7", "délai de livraison", "resolved",
        'inbound call to support: "late" -> resolved',
        json.loads('{"lines": [{"unit_price": "2.50", "quantity": 3}], "note": "ünï\\u2028"}'),
    )  # fmt: skip
    sparse = (
        "crm-web", "e2", AS_OF - timedelta(days=2), AS_OF - timedelta(days=2), "session",
        "crm.session.recorded.v1", None, None, None, None, None, None, "web session s1", {},
    )  # fmt: skip
    return [dict(zip(store.PAGE_COLUMN_NAMES, row, strict=True)) for row in (full, sparse, full)]


def test_a_page_row_holds_the_item_fields_in_their_order() -> None:
    assert tuple(TimelineItem.model_fields) == store.PAGE_COLUMN_NAMES


def test_a_page_document_is_serialised_as_the_validated_page() -> None:
    document = _page("C1", _rows(), 2, TimelineQuery(), AS_OF)
    served = document_response(document).body
    assert served == TimelinePage.model_validate(document).model_dump_json().encode()
    assert len(json.loads(served)["items"]) == 2 and json.loads(served)["next_cursor"]


def test_an_overview_document_is_serialised_as_the_validated_overview() -> None:
    later = datetime(2026, 5, 2, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    totals = ContactTotals(touchpoints=3, feedback=1, feedback_score_sum=4, last_contact_at=later)
    for summary in (_summary("C1", totals), None):
        document = {
            "timeline": _page("C1", _rows(), 5, TimelineQuery(), AS_OF),
            "contact_summary": summary,
        }
        served = document_response(document).body
        assert served == InteractionOverview.model_validate(document).model_dump_json().encode()
