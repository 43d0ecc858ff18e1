"""The demo newsletter: one e-mail to the demo's lapsed customers, defined by the event the
gateway publishes for `POST /v1/campaigns` (crm.campaign.defined.v1), so that a newcomer who runs
`./crm up` sees a campaign planned, its messages sent and their outcomes.

Pure: the loader passes the instant of the load in.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from crm_shared.contracts.events import CAMPAIGN_DEFINED, build_event

CAMPAIGN_ID = "demo-newsletter"
SEGMENT = "lapsed"
"""Every demo customer who bought is lapsed (the invoices are from 2010-2011)."""
SOURCE = "demo-generator"
SEND_DELAY = timedelta(minutes=5)
"""A campaign is planned once, when due, over the members the broadcast service knows then; the
profile service announces the demo's lapsed customers while it folds the load, which takes a few
minutes on a small machine. Sent at once, the newsletter would reach almost nobody."""
THROTTLE_PER_SECOND = 20

SUBJECT = "{% if name %}{{ name }}, w{% else %}W{% endif %}e picked these for you"
TEXT = (
    "Hello{% if name %} {{ name }}{% endif %},\n\n"
    "It has been a while. Picked for you:\n"
    "{% for p in recommendations %}- {{ p.description }} ({{ p.reason }})\n{% endfor %}\n"
    "New in the shop:\n"
    "{% for p in new_products %}- {{ p.description }}\n{% endfor %}\n"
    "Your preferences: {{ preference_centre_url }}\n"
    "Unsubscribe: {{ unsubscribe_url }}\n"
)


def definition(loaded_at: datetime) -> dict[str, Any]:
    """The newsletter's envelope, sent SEND_DELAY after the load. Its event id is the same on
    every load, so loading again defines nothing new (consumers drop the duplicate)."""
    data = {
        "name": "We miss you: picks from the gift shop",
        "kind": "newsletter",
        "purpose": "marketing",
        "target": {"segment": SEGMENT},
        "send_at": (loaded_at + SEND_DELAY).isoformat(),
        "include_recommendations": True,
        "throttle_per_second": THROTTLE_PER_SECOND,
        "templates": [{"channel": "email", "subject": SUBJECT, "text": TEXT}],
    }
    return build_event(
        CAMPAIGN_DEFINED,
        CAMPAIGN_ID,
        data,
        source=SOURCE,
        time=loaded_at,
        event_id=f"demo-campaign-{CAMPAIGN_ID}",
    )
