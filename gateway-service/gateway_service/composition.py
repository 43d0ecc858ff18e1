"""The customer 360: which service answers which part, and how the answers become one view. Pure.

Each part ends in one outcome: found, not found (the service does not know the customer: an
empty part, not an outage), or failed (timeout, unreachable, error). Failed and empty parts
are listed in `missing` with the reason, so a client sees what it lacks and why; the view as a
whole fails only when no service knows the customer at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Part:
    """One section of the 360 and the service call that fills it."""

    name: str
    service: Literal["profile", "interaction", "broadcast", "recommendation"]
    path: str
    """Path template on the service, with `{customer_id}`."""
    params: Mapping[str, str] = field(default_factory=dict)
    knows_customer: bool = True
    """False for parts that answer for anyone (popular products), so they prove nothing."""
    member: str | None = None
    """When the call answers several parts: the member of its JSON object that holds this one.
    Parts with the same call are asked once."""


INTERACTION_OVERVIEW = "/customers/{customer_id}/overview"
"""The timeline's first page and the contact summary, in one answer."""

PARTS: tuple[Part, ...] = (
    Part("profile", "profile", "/customers/{customer_id}"),
    Part("timeline", "interaction", INTERACTION_OVERVIEW, {"limit": "20"}, member="timeline"),
    Part(
        "contact_summary",
        "interaction",
        INTERACTION_OVERVIEW,
        {"limit": "20"},
        member="contact_summary",
    ),
    Part("preferences", "broadcast", "/customers/{customer_id}/preferences"),
    Part(
        "recommendations",
        "recommendation",
        "/customers/{customer_id}/recommendations",
        {"limit": "10"},
        knows_customer=False,
    ),
)


def calls(parts: Iterable[Part]) -> tuple[tuple[Part, ...], ...]:
    """The parts grouped by the service call that answers them, in the order of their first."""
    grouped: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[Part]] = {}
    for part in parts:
        grouped.setdefault((part.service, part.path, tuple(part.params.items())), []).append(part)
    return tuple(tuple(group) for group in grouped.values())


CALLS = calls(PARTS)
"""What the gateway asks for a customer 360: four calls for five parts."""


@dataclass(frozen=True)
class Found:
    body: Mapping[str, Any]
    label: Literal["found"] = "found"
    raw: bytes | None = field(default=None, compare=False, repr=False)
    """The body as the service sent it, when there is such a text: the view passes it on as is."""


@dataclass(frozen=True)
class NotFound:
    label: Literal["not_found"] = "not_found"
    reason: str = "not found"


@dataclass(frozen=True)
class Failed:
    label: Literal["timeout", "unavailable", "error"]
    reason: str


Outcome = Found | NotFound | Failed


def timed_out(seconds: float) -> Failed:
    return Failed("timeout", f"timeout after {seconds} s")


def unavailable(why: str) -> Failed:
    return Failed("unavailable", f"unavailable: {why}")


def errored(why: str) -> Failed:
    return Failed("error", f"error: {why}")


def from_response(status: int, body: Any, raw: bytes | None = None) -> Outcome:
    """What a service's HTTP answer means for its part; `raw` is the JSON text of `body`."""
    failure = _failure(status, isinstance(body, dict))
    return Found(body, raw=raw) if failure is None else failure


def answer_label(status: int, is_object: bool) -> str:
    """The outcome's label of an answer passed on undecoded (a timeline page), from its status
    and whether its body is a JSON object: the label from_response's outcome would have."""
    failure = _failure(status, is_object)
    return "found" if failure is None else failure.label


def _failure(status: int, is_object: bool) -> NotFound | Failed | None:
    if status == 404:
        return NotFound()
    if status != 200:
        return errored(f"HTTP {status}")
    if not is_object:
        return errored("the response is not a JSON object")
    return None


def outcomes_of(parts: Iterable[Part], answer: Outcome) -> dict[str, Outcome]:
    """Each part's outcome from the outcome of the call that answers them all: a whole answer
    for a part without a member, else its member (not found when the member is null)."""
    return {part.name: _member(part, answer) for part in parts}


def _member(part: Part, answer: Outcome) -> Outcome:
    if part.member is None or not isinstance(answer, Found):
        return answer
    body = answer.body.get(part.member)
    if body is None:
        return NotFound()
    if not isinstance(body, dict):
        return errored(f"{part.member} in the response is not a JSON object")
    return Found(body)


@dataclass(frozen=True)
class MissingPart:
    part: str
    reason: str


@dataclass(frozen=True)
class Customer360:
    customer_id: str
    profile: Mapping[str, Any] | None
    timeline: Mapping[str, Any] | None
    contact_summary: Mapping[str, Any] | None
    preferences: Mapping[str, Any] | None
    recommendations: Mapping[str, Any] | None
    missing: tuple[MissingPart, ...]
    raw: Mapping[str, bytes] = field(default_factory=dict)
    """The JSON text of each found part that came with one, by part name."""


class CustomerUnknown(LookupError):
    """No service knows the customer: the gateway answers 404."""


def compose(customer_id: str, outcomes: Mapping[str, Outcome]) -> Customer360:
    """The view from every part's outcome; CustomerUnknown when no part that knows customers
    knows this one (recommendations answer for anyone, so they do not count)."""
    ordered = [(part.name, outcomes[part.name]) for part in PARTS]
    if all(isinstance(outcomes[part.name], NotFound) for part in PARTS if part.knows_customer):
        raise CustomerUnknown(f"customer {customer_id!r} is unknown")
    bodies = {
        name: dict(outcome.body) if isinstance(outcome, Found) else None
        for name, outcome in ordered
    }
    missing = tuple(
        MissingPart(name, outcome.reason)
        for name, outcome in ordered
        if not isinstance(outcome, Found)
    )
    return Customer360(
        customer_id=customer_id,
        profile=bodies["profile"],
        timeline=bodies["timeline"],
        contact_summary=bodies["contact_summary"],
        preferences=bodies["preferences"],
        recommendations=bodies["recommendations"],
        missing=missing,
        raw={
            name: outcome.raw
            for name, outcome in ordered
            if isinstance(outcome, Found) and outcome.raw is not None
        },
    )


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def render(view: Customer360) -> bytes:
    """The view as one JSON object, each found part spliced in as the text its service sent:
    the parts are neither validated again nor re-encoded (the services' response models have
    shaped them already)."""
    fields = [b'"customer_id":' + _json(view.customer_id)]
    fields.extend(
        _json(part.name) + b":" + (view.raw.get(part.name) or _json(getattr(view, part.name)))
        for part in PARTS
    )
    missing = [{"part": m.part, "reason": m.reason} for m in view.missing]
    fields.append(b'"missing":' + _json(missing))
    return b"{" + b",".join(fields) + b"}"
