"""The preference centre and one-click unsubscribe: web pages for customers, not API operations.

A customer arrives from a link in a message; the signed token in the link is the key, so there
is no login and no cookie. GET /preferences shows the form, filled from the broadcast service;
POST /preferences publishes what changed as events on crm.preferences. GET /unsubscribe only
shows a button: mail scanners fetch links, and a fetch must never unsubscribe. POST /unsubscribe
with `List-Unsubscribe=One-Click` (RFC 8058) withdraws the consent the link names.

The routes are left out of the OpenAPI document (they answer HTML to browsers and mail
providers; see docs/decisions.md). Mounted by gateway_service.api's create_app.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader
from pydantic import BaseModel
from starlette.datastructures import FormData

from crm_shared.contracts.events import (
    CONSENT_RECORDED,
    REACHABLE_CHANNELS,
    ConsentRecorded,
    ContactPurpose,
    InvalidEvent,
)
from crm_shared.runtime.links import InvalidLink, LinkClaims, read_link
from gateway_service import metrics, preference_centre
from gateway_service.commands import NotPublished, publish_events
from gateway_service.config import GatewaySettings
from gateway_service.ingest import GATEWAY
from gateway_service.preference_centre import (
    CentreState,
    InvalidForm,
    InvalidUnsubscribe,
    Submission,
)
from gateway_service.upstream import Services, UpstreamFailure, customer_path, json_body

MAX_TOKEN_LENGTH = 2048
ONE_CLICK = ("List-Unsubscribe", "One-Click")
"""The body of an RFC 8058 one-click unsubscribe POST."""
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # The token is in the page's address: no other site may learn it from a Referer header.
    # (Not no-referrer: then the browser sends `Origin: null` with the form, which the CSRF
    # check must refuse.)
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}
"""Every page: never cached, never framed (clickjacking), no scripts at all."""
TEMPLATES = Jinja2Templates(
    env=Environment(loader=PackageLoader("gateway_service", "templates"), autoescape=True)
)
TokenQuery = Annotated[str | None, Query(description="The signed token from the message's link")]


class Refused(Exception):
    """A request the centre answers with a page saying why, and this status."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def centre_router(settings: GatewaySettings) -> APIRouter:
    """The centre's routes, reading links with the platform's link secret."""
    secret = settings.platform.link_secret
    max_age = timedelta(days=settings.link_max_age_days)
    wording_version = settings.consent_wording_version
    router = APIRouter(include_in_schema=False)

    def claims_of(token: str | None) -> tuple[str, LinkClaims]:
        """The token, now known to be there, and what it says; Refused when it says nothing."""
        if secret is None:
            raise Refused(
                503,
                "Not available",
                "The preference centre is not set up on this server (CRM_LINK_SECRET).",
            )
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise Refused(
                400,
                "Link incomplete",
                "This page opens from the link in one of our messages; the link is incomplete.",
            )
        try:
            return token, read_link(secret.get_secret_value(), token, max_age)
        except InvalidLink as error:
            raise Refused(403, "Link not valid", f"Sorry: {error}.") from None

    @router.get("/preferences", response_class=HTMLResponse)
    async def show_preferences(request: Request, token: TokenQuery = None) -> Response:
        """The preference centre, filled with what the customer chose before."""
        try:
            token, claims = claims_of(token)
            state = await current_state(request, claims.customer_id)
        except Refused as refused:
            return _refusal(request, refused)
        values = preference_centre.form_values(state, datetime.now(UTC))
        return _form_page(request, token, values, json.dumps(values, sort_keys=True), {})

    @router.post("/preferences", response_class=HTMLResponse)
    async def save_preferences(request: Request, token: TokenQuery = None) -> Response:
        """Publish what the customer changed, and confirm it."""
        try:
            token, claims = claims_of(token)
            form = await _form(request)
            _check_same_site(request, form, token)
        except Refused as refused:
            return _refusal(request, refused)
        fields = {name: value for name, value in form.items() if isinstance(value, str)}
        shown_json = fields.get("shown", "")
        shown = preference_centre.shown_values(shown_json)
        typed = _as_typed(shown, fields)
        try:
            submission = preference_centre.read_form(fields, shown, datetime.now(UTC))
        except InvalidForm as invalid:
            return _form_page(request, token, typed, shown_json, invalid.problems)
        evidence = preference_centre.link_evidence("preference centre", claims, _client(request))
        events = preference_centre.submission_events(submission, wording_version, evidence)
        try:
            await _publish(
                request, claims.customer_id, [(kind, data, None) for kind, data in events]
            )
        except Refused as refused:
            problems = {"form": refused.message}
            return _form_page(request, token, typed, shown_json, problems, refused.status)
        for kind, _data in events:
            metrics.PREFERENCE_CENTRE_EVENTS.labels(kind).inc()
        return _page(request, "saved.html", {"summary": _summary(submission), "token": token})

    @router.get("/unsubscribe", response_class=HTMLResponse)
    async def confirm_unsubscribe(request: Request, token: TokenQuery = None) -> Response:
        """A page with an unsubscribe button; opening it changes nothing."""
        try:
            token, claims = claims_of(token)
            record = _withdrawal(claims, request)
        except Refused as refused:
            return _refusal(request, refused)
        context = {"token": token, "what": _consent_label(record.purpose, record.channel)}
        return _page(request, "unsubscribe.html", context)

    @router.post("/unsubscribe")
    async def unsubscribe(request: Request, token: TokenQuery = None) -> Response:
        """RFC 8058 one-click unsubscribe: the body `List-Unsubscribe=One-Click` withdraws the
        consent the link names; a repeated click publishes the same event again (same id)."""
        try:
            token, claims = claims_of(token)
            form = await _form(request)
            if form.get(ONE_CLICK[0]) != ONE_CLICK[1]:
                raise Refused(
                    400,
                    "Not unsubscribed",
                    "An unsubscribe request carries List-Unsubscribe=One-Click (RFC 8058).",
                )
            record = _withdrawal(claims, request)
            event_id = preference_centre.unsubscribe_event_id(token)
            await _publish(request, claims.customer_id, [(CONSENT_RECORDED, record, event_id)])
        except Refused as refused:
            return _refusal(request, refused)
        metrics.PREFERENCE_CENTRE_EVENTS.labels("unsubscribe").inc()
        if form.get("from") != "page":
            return Response(status_code=200)  # a mail provider's request: it wants no page
        what = _consent_label(record.purpose, record.channel)
        return _page(request, "unsubscribed.html", {"token": token, "what": what})

    return router


async def current_state(request: Request, customer_id: str) -> CentreState:
    """What the broadcast service has stored for the customer, as the page shows it: its
    GET /customers/{id}/preferences read by preference_centre.state_from_broadcast; a customer
    it does not know gets an empty form."""
    services: Services = request.app.state.services
    path = customer_path("/customers/{customer_id}/preferences", customer_id)
    try:
        answer = await services.get("broadcast", path, {}, request.state.request_id)
    except UpstreamFailure as failure:
        metrics.UPSTREAM_REQUESTS.labels("preference_centre", failure.outcome.label).inc()
        raise _try_later() from None
    body = json_body(answer.content)
    found = answer.status == 200 and isinstance(body, dict)
    if not found and answer.status != 404:
        metrics.UPSTREAM_REQUESTS.labels("preference_centre", "error").inc()
        raise _try_later()
    metrics.UPSTREAM_REQUESTS.labels("preference_centre", "found" if found else "not_found").inc()
    return preference_centre.state_from_broadcast(body if found else None)


def _as_typed(shown: dict[str, str], fields: dict[str, str]) -> dict[str, str]:
    """The form as the customer sent it, to show again: a box they unticked is not sent, so
    every field the page had starts empty."""
    return {name: "" for name in shown} | fields


def _try_later() -> Refused:
    return Refused(
        503,
        "Please try again later",
        "We cannot show your preferences right now. Nothing was changed; please try again later.",
    )


async def _form(request: Request) -> FormData:
    """The submitted form (urlencoded or multipart, as RFC 8058 allows); 400 when unreadable."""
    try:
        return await request.form(max_files=0, max_fields=200)
    except (ValueError, KeyError, AssertionError) as error:
        raise Refused(400, "Form not readable", f"The form could not be read ({error}).") from None


def _check_same_site(request: Request, form: FormData, token: str) -> None:
    """The CSRF defence of a form behind a token link: the form carries the token it was served
    with, and a browser that says where the request comes from must say it comes from here."""
    if form.get("token") != token:
        raise Refused(403, "Form not accepted", "This form does not belong to this link.")
    origin = request.headers.get("origin")
    cross_site = request.headers.get("sec-fetch-site") == "cross-site"
    if cross_site or (
        origin is not None and urlsplit(origin).netloc != request.headers.get("host")
    ):
        raise Refused(
            403, "Form not accepted", "This form was sent from another site; nothing was changed."
        )


def _withdrawal(claims: LinkClaims, request: Request) -> ConsentRecorded:
    try:
        return preference_centre.unsubscribe_record(claims, _client(request))
    except InvalidUnsubscribe as error:
        raise Refused(400, "Not unsubscribed", f"Sorry: {error}.") from None


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _publish(
    request: Request, customer_id: str, events: list[tuple[str, BaseModel, str | None]]
) -> None:
    """Publish the events, each with its id (a fresh one when None); Refused (503) unless Kafka
    acknowledged every one."""
    try:
        await publish_events(request, customer_id, events, GATEWAY)
    except InvalidEvent as error:
        raise Refused(400, "Not saved", f"Sorry: {error}.") from None
    except NotPublished:
        raise Refused(
            503,
            "Please try again later",
            "Your choice could not be recorded right now, so nothing was changed. "
            "Please try again in a minute.",
        ) from None


def _consent_label(purpose: str, channel: str | None) -> str:
    """E.g. 'marketing messages by SMS', 'marketing messages on every channel'."""
    by = f"by {preference_centre.CHANNEL_LABELS.get(channel, channel)}" if channel else ""
    return f"{purpose} messages {by or 'on every channel'}"


def _summary(submission: Submission) -> list[str]:
    """What the confirmation lists: each change in words."""
    lines: list[str] = []
    if submission.setup is not None:
        names = ", ".join(
            preference_centre.CHANNEL_LABELS[s.channel] for s in submission.setup.channels
        )
        lines.append(f"Channels, in your order: {names} (time zone {submission.setup.timezone})")
    for (purpose, channel), granted in submission.consents.items():
        scope = None if channel == preference_centre.EVERY_CHANNEL else channel
        verb = "yes to" if granted else "no to"
        lines.append(f"{verb.capitalize()} {_consent_label(purpose, scope)}")
    return lines or ["Nothing changed."]


def _form_page(
    request: Request,
    token: str,
    values: dict[str, str],
    shown_json: str,
    problems: dict[str, str],
    status: int | None = None,
) -> Response:
    context = {
        "token": token,
        "action": "preferences?token=" + quote(token, safe=""),
        "values": values,
        "shown": shown_json,
        "problems": problems,
        "channels": [(c.value, preference_centre.CHANNEL_LABELS[c]) for c in REACHABLE_CHANNELS],
        "per_channel_purposes": preference_centre.PER_CHANNEL_PURPOSES,
        "whole_purposes": preference_centre.WHOLE_PURPOSES,
        "transactional": ContactPurpose.TRANSACTIONAL,
        "time_zones": preference_centre.time_zones(),
        "every_channel": preference_centre.EVERY_CHANNEL,
    }
    return _page(request, "preferences.html", context, status or (422 if problems else 200))


def _refusal(request: Request, refused: Refused) -> Response:
    context = {"title": refused.title, "message": refused.message}
    return _page(request, "message.html", context, refused.status)


def _page(request: Request, template: str, context: dict[str, Any], status: int = 200) -> Response:
    return TEMPLATES.TemplateResponse(
        request, template, context, status_code=status, headers=PAGE_HEADERS
    )
