"""Seeded synthetic CRM facts around the real customers: contacts, feedback, preferences,
consents, product views, cases and scored feedback, which the retail data set does not have.

Pure and deterministic: each customer gets its own `random.Random(f"{seed}:{customer_id}")`,
so a customer's facts are the same whether the whole file or only the first N customers are
loaded, and event ids (`demo-contact-17850-2`) make a re-load idempotent.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from crm_shared.contracts.events import (
    CASE_ASSIGNED,
    CASE_CLOSED,
    CASE_ESCALATED,
    CASE_OPENED,
    CASE_REOPENED,
    CASE_RESOLVED,
    CASE_TRANSFERRED,
    CHANNEL_PREFERENCE_SET_V2,
    CONSENT_RECORDED,
    FEEDBACK_GIVEN_V2,
    build_event,
)
from crm_shared.ops.demo import event_order

SOURCE = "demo-generator"
AFTER_LAST_SEEN = timedelta(days=30)
"""Facts may follow a customer's last invoice by up to this much (a complaint, a late view)."""
SESSION_LENGTH = timedelta(hours=1)

_TOPICS = {
    "sales": (
        "wholesale price list",
        "bulk order enquiry",
        "new season catalogue",
        "trade account upgrade",
        "christmas range preview",
    ),
    "support": (
        "damaged item",
        "missing item",
        "late delivery",
        "wrong item received",
        "website login problem",
    ),
    "service": (
        "change of delivery address",
        "return request",
        "product care question",
        "gift wrapping",
        "account details update",
    ),
    "billing": ("invoice copy", "payment failed", "refund status", "VAT query", "credit limit"),
}
_FIRST_EMPLOYEE = {"sales": 100, "support": 200, "service": 300, "billing": 400}
_EMPLOYEES_PER_DEPARTMENT = 12
_CONTACT_CHANNELS = {
    "inbound": ("phone", "phone", "email", "email", "chat", "web", "mail"),
    "outbound": ("phone", "phone", "email", "email", "sms", "mail"),
}
_OUTCOMES = {
    "inbound": (
        "resolved",
        "resolved",
        "resolved",
        "information given",
        "escalated",
        "callback scheduled",
        "refused",
    ),
    "outbound": (
        "resolved",
        "offer accepted",
        "no answer",
        "no answer",
        "callback scheduled",
        "escalated",
        "refused",
    ),
}
_NOTES = (
    None,
    None,
    None,
    "customer asked for a written confirmation",
    "second contact about the same matter",
    "customer was in a hurry, keep it short next time",
    "prefers to be addressed by first name",
)
_FEEDBACK: dict[int, tuple[tuple[str, str | None], ...]] = {
    # score: (kind, comment) options
    1: (
        ("complaint", "Half of the order arrived broken and nobody answered my e-mails."),
        ("complaint", "Delivery was two weeks late, just after the event it was for."),
        ("complaint", None),
    ),
    2: (
        ("complaint", "Items look cheaper than on the photos."),
        ("complaint", "Had to call three times to get the refund."),
        ("suggestion", "Please pack glass items better, two mugs were chipped."),
    ),
    3: (
        ("comment", "Fine, nothing special."),
        ("suggestion", "Would order more if delivery to Europe were cheaper."),
        ("suggestion", "A search by colour on the website would help."),
        ("comment", None),
    ),
    4: (
        ("praise", "Good value, my customers love the tea lights."),
        ("comment", "Quick delivery, one item was out of stock."),
        ("praise", None),
    ),
    5: (
        ("praise", "Lovely products and always on time, thank you!"),
        ("praise", "The new catalogue is great, ordered half of it."),
        ("praise", "Staff on the phone were really helpful."),
    ),
}
_SCORE_WEIGHTS = (1, 1, 2, 4, 5)
_FEEDBACK_CHANNELS = ("web", "web", "email", "phone")
_PREFERRED_CHANNELS = ("email", "phone", "sms", "mail", "push")
_TIMEZONE = "Europe/London"
_QUIET_HOURS = (("21:00", "08:00"), ("22:00", "07:00"), ("12:00", "14:00"), ("18:00", "09:00"))
_PURPOSES = ("marketing", "service", "personalisation")
_CAPTURES = ("web_form", "web_form", "in_store", "call_centre")
_WORDING = "privacy-notice-2011-01"
_REVOKE_PROBABILITY = 0.2
_VIEW_CHANNELS = ("web", "web", "web", "web", "email", "social")

CustomerSpan = tuple[str, datetime, datetime]
"""(customer id, first seen, last seen), aware datetimes; `retail.CustomerWindow` fits."""


def generate(
    customers: Iterable[CustomerSpan], products: Sequence[str], seed: int = 7
) -> list[dict[str, Any]]:
    """Validated envelopes for every customer, in publishing order (`event_order`).

    `products` should be most popular first: views lean towards the head of the list.
    """
    if not products:
        raise ValueError("need at least one product id to generate views")
    documents: list[dict[str, Any]] = []
    for customer_id, first_seen, last_seen in customers:
        if last_seen < first_seen:
            raise ValueError(f"customer {customer_id}: last seen before first seen")
        rng = random.Random(f"{seed}:{customer_id}")
        window = _Window(rng, first_seen, last_seen + AFTER_LAST_SEEN)
        documents += _preference(customer_id, window)
        documents += _consents(customer_id, window)
        documents += _contacts(customer_id, window)
        documents += _feedback(customer_id, window)
        documents += _views(customer_id, window, products)
        # Drawn last, so that the facts above stay what they were before cases were generated.
        cases = _cases(customer_id, window)
        documents += cases + _scores(customer_id, window, cases)
    documents.sort(key=event_order)
    return documents


class _Window:
    """A customer's random source and the span their synthetic facts fall into."""

    def __init__(self, rng: random.Random, start: datetime, end: datetime) -> None:
        self.rng = rng
        self.start = start
        self.end = end

    def time(self, start: datetime | None = None, end: datetime | None = None) -> datetime:
        """A whole-second time in [start, end], by default the whole window."""
        low, high = start or self.start, end or self.end
        seconds = int((high - low).total_seconds())
        return low + timedelta(seconds=self.rng.randint(0, max(seconds, 0)))


def _event(
    event_type: str, customer_id: str, data: dict[str, Any], time: datetime, event_id: str
) -> dict[str, Any]:
    return build_event(event_type, customer_id, data, source=SOURCE, time=time, event_id=event_id)


def _preference(customer_id: str, window: _Window) -> list[dict[str, Any]]:
    """One channel set-up (v2), within a week of the first invoice (when the account was made):
    1-3 channels in order, each with its address, some with quiet hours or a weekly cap."""
    rng = window.rng
    channels = []
    for channel in rng.sample(_PREFERRED_CHANNELS, rng.randint(1, 3)):
        setting: dict[str, Any] = {"channel": channel, "address": _address(customer_id, channel)}
        if rng.random() < 0.4:
            start, end = rng.choice(_QUIET_HOURS)
            setting["quiet_hours"] = {"start": start, "end": end, "timezone": _TIMEZONE}
        if rng.random() < 0.3:
            setting["max_per_week"] = rng.choice((1, 2, 3))
        channels.append(setting)
    time = window.time(end=min(window.end, window.start + timedelta(days=7)))
    data = {"channels": channels, "timezone": _TIMEZONE}
    event_id = f"demo-preference-{customer_id}"
    return [_event(CHANNEL_PREFERENCE_SET_V2, customer_id, data, time, event_id)]


def _address(customer_id: str, channel: str) -> str:
    """A made-up address in a reserved domain or number range: nothing real is ever reached."""
    digits = "".join(c for c in customer_id if c.isdigit()).rjust(6, "0")[-6:]
    return {
        "email": f"customer-{customer_id}@example.com",
        "sms": f"+44 7700 900{digits[-3:]}",
        "phone": f"+44 20 7946 0{digits[-3:]}",
        "mail": f"{digits} Demo Street, London",
        "push": f"device-{customer_id}",
    }[channel]


def _consents(customer_id: str, window: _Window) -> list[dict[str, Any]]:
    """1-3 purposes decided with their evidence. A web-form grant of marketing is confirmed by
    double opt-in most of the time (else it stays pending); some decisions are later revoked,
    which the broadcast service must honour."""
    rng = window.rng
    documents = []
    for purpose in rng.sample(_PURPOSES, rng.randint(1, 3)):
        capture = rng.choice(_CAPTURES)
        data: dict[str, Any] = {
            "purpose": purpose,
            "state": "granted",
            "capture_method": capture,
            "wording_version": _WORDING,
        }
        if purpose == "marketing" and rng.random() < 0.5:
            data["channel"] = "email"
        granted = window.time()
        event_id = f"demo-consent-{customer_id}-{purpose}"
        documents.append(_event(CONSENT_RECORDED, customer_id, data, granted, event_id))
        if purpose == "marketing" and capture == "web_form" and rng.random() < 0.8:
            confirmed = window.time(start=granted)
            data = data | {"capture_method": "double_opt_in", "evidence": "confirmation link"}
            event_id = f"demo-consent-confirmed-{customer_id}-{purpose}"
            documents.append(_event(CONSENT_RECORDED, customer_id, data, confirmed, event_id))
            granted = confirmed
        if rng.random() < _REVOKE_PROBABILITY:
            data = data | {
                "state": "revoked",
                "capture_method": "unsubscribe_link",
                "evidence": "unsubscribe link in a newsletter",
            }
            event_id = f"demo-consent-revoked-{customer_id}-{purpose}"
            documents.append(
                _event(CONSENT_RECORDED, customer_id, data, window.time(start=granted), event_id)
            )
    return documents


def _contacts(customer_id: str, window: _Window) -> list[dict[str, Any]]:
    """0-6 touchpoints with a department; outcomes include refusals and escalations."""
    rng = window.rng
    documents = []
    for number in range(rng.randint(0, 6)):
        department = rng.choice(tuple(_TOPICS))
        employee = _FIRST_EMPLOYEE[department] + rng.randrange(_EMPLOYEES_PER_DEPARTMENT)
        direction = "inbound" if rng.random() < 0.65 else "outbound"
        data = {
            "channel": rng.choice(_CONTACT_CHANNELS[direction]),
            "direction": direction,
            "department": department,
            "employee_id": f"E{employee}",
            "topic": rng.choice(_TOPICS[department]),
            "outcome": rng.choice(_OUTCOMES[direction]),
            "note": rng.choice(_NOTES),
        }
        documents.append(
            _event(
                "crm.contact.logged.v1",
                customer_id,
                data,
                window.time(),
                f"demo-contact-{customer_id}-{number}",
            )
        )
    return documents


def _feedback(customer_id: str, window: _Window) -> list[dict[str, Any]]:
    """0-3 scores, mostly good (the shop keeps its customers), with a matching comment."""
    rng = window.rng
    documents = []
    for number in range(rng.randint(0, 3)):
        score = rng.choices(range(1, 6), weights=_SCORE_WEIGHTS)[0]
        kind, comment = rng.choice(_FEEDBACK[score])
        data = {
            "score": score,
            "kind": kind,
            "comment": comment,
            "channel": rng.choice(_FEEDBACK_CHANNELS),
        }
        documents.append(
            _event(
                "crm.feedback.given.v1",
                customer_id,
                data,
                window.time(),
                f"demo-feedback-{customer_id}-{number}",
            )
        )
    return documents


def _views(customer_id: str, window: _Window, products: Sequence[str]) -> list[dict[str, Any]]:
    """0-15 views in 1-3 browsing sessions of up to an hour, popular products more often."""
    rng = window.rng
    count = rng.randint(0, 15)
    if count == 0:
        return []
    latest_session_start = max(window.start, window.end - SESSION_LENGTH)
    sessions = [window.time(end=latest_session_start) for _ in range(rng.randint(1, 3))]
    documents = []
    for number in range(count):
        session = rng.randrange(len(sessions))
        start = sessions[session]
        data = {
            # squaring a uniform draw leans towards the start of the popularity-ordered list
            "product_id": products[int(len(products) * rng.random() ** 2)],
            "channel": rng.choice(_VIEW_CHANNELS),
            "session_id": f"demo-session-{customer_id}-{session}",
        }
        time = window.time(start=start, end=min(window.end, start + SESSION_LENGTH))
        documents.append(
            _event(
                "crm.product.viewed.v1",
                customer_id,
                data,
                time,
                f"demo-view-{customer_id}-{number}",
            )
        )
    return documents


_CASE_PROBABILITY = 0.3
_CASE_KINDS = ("complaint", "request", "request", "question")
_CASE_PRIORITIES = ("urgent", "high", "normal", "normal", "normal", "low")
_CASE_DEPARTMENTS = ("support", "service", "billing")
_CASE_CHANNELS = ("phone", "phone", "email", "chat", "web")
CASE_SPAN = timedelta(days=7)
"""A demo case's steps all fall within this long after its opening (inside the window)."""
_RESOLUTIONS = (
    "replacement sent",
    "refund issued",
    "explained the policy",
    "delivery rebooked",
    "account corrected",
)


def _employee(rng: random.Random, department: str) -> str:
    return f"E{_FIRST_EMPLOYEE[department] + rng.randrange(_EMPLOYEES_PER_DEPARTMENT)}"


def _cases(customer_id: str, window: _Window) -> list[dict[str, Any]]:
    """For about a third of the customers 1-2 cases, each through a plausible lifecycle: opened
    in a queue or with an employee, mostly assigned, sometimes transferred to another department
    or escalated, mostly resolved (a few reopened and resolved again), most resolved ones closed;
    the rest stay open (and miss their SLA targets by the clock)."""
    rng = window.rng
    if rng.random() >= _CASE_PROBABILITY:
        return []
    documents = []
    for number in range(rng.randint(1, 2)):
        case_id = f"demo-case-{customer_id}-{number}"
        department = rng.choice(_CASE_DEPARTMENTS)
        employee = _employee(rng, department) if rng.random() < 0.3 else None
        when = window.time(end=max(window.start, window.end - CASE_SPAN))
        steps: list[tuple[str, dict[str, Any]]] = [
            (
                CASE_OPENED,
                {
                    "kind": rng.choice(_CASE_KINDS),
                    "priority": rng.choice(_CASE_PRIORITIES),
                    "topic": rng.choice(_TOPICS[department]),
                    "channel": rng.choice(_CASE_CHANNELS),
                    "department": department,
                    "employee_id": employee,
                },
            )
        ]
        if employee is None and rng.random() < 0.8:
            employee = _employee(rng, department)
            steps.append((CASE_ASSIGNED, {"employee_id": employee, "department": department}))
        if rng.random() < 0.25:
            target = rng.choice([d for d in _CASE_DEPARTMENTS if d != department])
            to_employee = _employee(rng, target) if rng.random() < 0.5 else None
            transfer = {
                "from_employee_id": employee,
                "from_department": department,
                "to_employee_id": to_employee,
                "to_department": target,
                "reason": f"needs {target}",
            }
            steps.append((CASE_TRANSFERRED, transfer))
            department, employee = target, to_employee
        if rng.random() < 0.1:
            steps.append((CASE_ESCALATED, {"level": 1, "reason": "customer asked for a manager"}))
        if rng.random() < 0.85:
            steps.append((CASE_RESOLVED, {"resolution": rng.choice(_RESOLUTIONS)}))
            if rng.random() < 0.1:
                steps.append((CASE_REOPENED, {"reason": "the problem came back"}))
                steps.append((CASE_RESOLVED, {"resolution": rng.choice(_RESOLUTIONS)}))
            if rng.random() < 0.7:
                steps.append((CASE_CLOSED, {"reason": "customer confirmed"}))
        # Strictly later step by step, all within CASE_SPAN of the opening.
        gaps = sorted(rng.sample(range(1, int(CASE_SPAN.total_seconds()) // 60), len(steps) - 1))
        for index, (event_type, data) in enumerate(steps):
            time = when + timedelta(minutes=gaps[index - 1]) if index else when
            event_id = f"{case_id}-{index}"
            step = {"case_id": case_id, **{k: v for k, v in data.items() if v is not None}}
            documents.append(_event(event_type, customer_id, step, time, event_id))
    return documents


_NPS_WEIGHTS = (1, 1, 1, 1, 1, 2, 2, 4, 6, 7, 5)
"""Weights of NPS scores 0 to 10: mostly passives and promoters, some detractors."""
_NPS_PROBABILITY = 0.5
_DIMENSIONS = ("reliability", "efficiency", "convenience", "integrity")


def _scores(
    customer_id: str, window: _Window, cases: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Scored feedback (v2): an NPS survey for about half the customers, and after each
    resolution a CSAT and an effort score linked to the case, rated by the department that
    resolved it, some with experience dimensions."""
    rng = window.rng
    documents = []
    if rng.random() < _NPS_PROBABILITY:
        data: dict[str, Any] = {
            "measure": "nps",
            "score": rng.choices(range(11), weights=_NPS_WEIGHTS)[0],
            "channel": "email",
            "touchpoint": "nps-survey",
        }
        event_id = f"demo-nps-{customer_id}"
        documents.append(_event(FEEDBACK_GIVEN_V2, customer_id, data, window.time(), event_id))
    holders: dict[str, str] = {}
    for step in cases:
        case = step["data"]
        if step["type"] in (CASE_OPENED, CASE_TRANSFERRED):
            holders[case["case_id"]] = case.get("to_department") or case["department"]
        if step["type"] != CASE_RESOLVED:
            continue
        resolved = datetime.fromisoformat(step["time"])
        after = min(window.end, resolved + timedelta(hours=rng.randint(1, 48)))
        csat = rng.choices(range(1, 6), weights=_SCORE_WEIGHTS)[0]
        kind, comment = rng.choice(_FEEDBACK[csat])
        rated = {"kind": "case", "id": case["case_id"]}
        common = {
            "channel": "email",
            "touchpoint": "case-survey",
            "department": holders[case["case_id"]],
            "about": rated,
        }
        dimensions = {
            d: max(1, min(5, csat + rng.randint(-1, 1)))
            for d in rng.sample(_DIMENSIONS, rng.randint(0, 2))
        }
        satisfaction = {
            **common,
            "measure": "csat",
            "score": csat,
            "kind": kind,
            "comment": comment,
            "dimensions": dimensions,
        }
        effort = {**common, "measure": "ces", "score": max(1, min(7, csat + rng.randint(0, 2)))}
        for name, data in (("csat", satisfaction), ("ces", effort)):
            event_id = f"demo-{name}-{step['id']}"
            documents.append(_event(FEEDBACK_GIVEN_V2, customer_id, data, after, event_id))
    return documents
