"""The gateway's routes to a customer's reach (scopes preferences:read and preferences:write):
their channel set-up, consents with evidence and history, do-not-contact entries, the holds on
promotions, and the contact decision with its reasons, as the broadcast service answers them.

Writes are commands: each becomes one event on crm.preferences (`crm.channel_preference.set.v2`,
`crm.consent.recorded.v2`, `crm.do_not_contact.added.v1` / `removed.v1`), validated as the worker
will validate it, and the answer is 202 with the event's id: the change shows once it is folded.
The event's source names the API key that recorded it, which is part of a consent's evidence.

Mounted by gateway_service.api's create_app, whose guards and types it shares.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from crm_shared.contracts.events import (
    CHANNEL_PREFERENCE_SET_V2,
    CONSENT_RECORDED,
    DO_NOT_CONTACT_ADDED,
    DO_NOT_CONTACT_REMOVED,
    Channel,
    ChannelPreferenceSetV2,
    ConsentRecorded,
    ContactPurpose,
    DoNotContactAdded,
    DoNotContactRemoved,
)
from gateway_service.api import GUARDED, CustomerIdPath, errors, require
from gateway_service.auth import PREFERENCES_READ, PREFERENCES_WRITE, StoredKey
from gateway_service.commands import publish_command
from gateway_service.passthrough import passed_on
from gateway_service.upstream import customer_path

PreferencesReader = Annotated[StoredKey, Depends(require(PREFERENCES_READ))]
PreferencesWriter = Annotated[StoredKey, Depends(require(PREFERENCES_WRITE))]
UPSTREAM = (502, 503, 504)

router = APIRouter()


class PreferenceCommandAccepted(BaseModel):
    event_id: str
    type: str
    customer_id: str


async def _publish(
    request: Request, key: StoredKey, event_type: str, customer_id: str, data: BaseModel
) -> PreferenceCommandAccepted:
    """Publish the customer's event. Only what the caller gave: a quiet window that names no
    zone is read in the customer's zone, so its default must not be written into the event."""
    given = data.model_dump(mode="json", exclude_unset=True)
    source = f"gateway:{key.key_id}"
    event_id = await publish_command(request, event_type, customer_id, given, source)
    return PreferenceCommandAccepted(event_id=event_id, type=event_type, customer_id=customer_id)


async def _from_broadcast(
    request: Request, part: str, path: str, customer_id: str, params: dict[str, Any]
) -> Response:
    return await passed_on(request, "broadcast", part, customer_path(path, customer_id), params)


@router.get(
    "/v1/customers/{customer_id}/preferences",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_preferences(
    customer_id: CustomerIdPath, request: Request, _key: PreferencesReader
) -> Response:
    """The customer's channel set-up (addresses, quiet hours, caps, pauses), consents with
    their evidence, do-not-contact entries, and the holds on promotions."""
    path = "/customers/{customer_id}/preferences"
    return await _from_broadcast(request, "preferences", path, customer_id, {})


@router.get(
    "/v1/customers/{customer_id}/consent-history",
    response_model=list[dict[str, Any]],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_consent_history(
    customer_id: CustomerIdPath,
    request: Request,
    _key: PreferencesReader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Every consent decision of the customer with its evidence, refusals included, newest
    first."""
    path = "/customers/{customer_id}/consent-history"
    return await _from_broadcast(request, "consent_history", path, customer_id, {"limit": limit})


@router.get(
    "/v1/customers/{customer_id}/contact-decision",
    response_model=dict[str, Any],
    responses=errors(*GUARDED, 404, *UPSTREAM),
)
async def get_contact_decision(
    customer_id: CustomerIdPath,
    request: Request,
    _key: PreferencesReader,
    purpose: ContactPurpose,
    channel: Annotated[Channel | None, Query(description="Ask about this channel only")] = None,
    at: Annotated[
        datetime | None, Query(description="When, with a UTC offset (default now)")
    ] = None,
) -> Response:
    """May the customer be contacted for the purpose, when, and on which channel: with the
    reasons (a code and a text) for every channel considered."""
    params: dict[str, Any] = {"purpose": purpose.value}
    if channel is not None:
        params["channel"] = channel.value
    if at is not None:
        params["at"] = at.isoformat()
    path = "/customers/{customer_id}/decision"
    return await _from_broadcast(request, "contact_decision", path, customer_id, params)


@router.put(
    "/v1/customers/{customer_id}/preferences",
    response_model=PreferenceCommandAccepted,
    status_code=202,
    responses=errors(*GUARDED, 400, 503),
)
async def set_preferences(
    customer_id: CustomerIdPath,
    setup: ChannelPreferenceSetV2,
    request: Request,
    key: PreferencesWriter,
) -> PreferenceCommandAccepted:
    """Replace the customer's channel set-up: channels in order of preference, each with its
    address, quiet hours, caps and pause, and the customer's time zone."""
    return await _publish(request, key, CHANNEL_PREFERENCE_SET_V2, customer_id, setup)


@router.post(
    "/v1/customers/{customer_id}/consents",
    response_model=PreferenceCommandAccepted,
    status_code=202,
    responses=errors(*GUARDED, 400, 503),
)
async def record_consent(
    customer_id: CustomerIdPath,
    consent: ConsentRecorded,
    request: Request,
    key: PreferencesWriter,
) -> PreferenceCommandAccepted:
    """Record a consent decision (granted, pending, denied, revoked) for a purpose on a channel
    or every channel, with its evidence."""
    return await _publish(request, key, CONSENT_RECORDED, customer_id, consent)


@router.post(
    "/v1/customers/{customer_id}/do-not-contact",
    response_model=PreferenceCommandAccepted,
    status_code=202,
    responses=errors(*GUARDED, 400, 503),
)
async def add_do_not_contact(
    customer_id: CustomerIdPath,
    entry: DoNotContactAdded,
    request: Request,
    key: PreferencesWriter,
) -> PreferenceCommandAccepted:
    """Put the customer on the do-not-contact list for a channel (or every channel), with a
    reason."""
    return await _publish(request, key, DO_NOT_CONTACT_ADDED, customer_id, entry)


@router.delete(
    "/v1/customers/{customer_id}/do-not-contact",
    response_model=PreferenceCommandAccepted,
    status_code=202,
    responses=errors(*GUARDED, 503),
)
async def remove_do_not_contact(
    customer_id: CustomerIdPath,
    request: Request,
    key: PreferencesWriter,
    channel: Annotated[
        Channel | None, Query(description="The channel's entry; absent: the every-channel entry")
    ] = None,
    note: Annotated[str | None, Query(max_length=300)] = None,
) -> PreferenceCommandAccepted:
    """Lift a do-not-contact entry of the customer."""
    data = DoNotContactRemoved(channel=channel, note=note)
    return await _publish(request, key, DO_NOT_CONTACT_REMOVED, customer_id, data)
