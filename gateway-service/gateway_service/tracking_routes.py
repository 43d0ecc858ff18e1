"""Open and click tracking of e-mails: public routes without an API key, the signed token in the
link being the key (crm_shared.runtime.links' tracking tokens, minted by the broadcast sender).

GET /track/open answers a 1x1 transparent GIF, never cached, and records "opened" for the message;
GET /track/click records "clicked" with the target as reason and redirects (302) to the target the
token signed, and nowhere else. Both record through the broadcast service's report route; when it
cannot record, the customer still gets the image or the page they asked for, and the loss is
counted (crm_gateway_tracking_reports{result="failed"}). A token that is missing, altered or
expired is refused with a message (for a click, a small page).

Left out of the OpenAPI document like the preference centre: mail clients and browsers call them,
not API clients. Mounted by gateway_service.api's create_app.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse, RedirectResponse

from crm_shared.contracts.delivery_reports import (
    REPORT_REASON_MAX_LENGTH,
    DeliveryReport,
    ReportedOutcome,
)
from crm_shared.runtime.links import (
    CLICK_PATH,
    MAX_TRACKING_TOKEN_LENGTH,
    OPEN_PIXEL_PATH,
    InvalidLink,
    TrackingClaims,
    read_tracking,
)
from gateway_service import metrics
from gateway_service.centre_routes import PAGE_HEADERS, TEMPLATES, Refused, TokenQuery
from gateway_service.config import GatewaySettings
from gateway_service.upstream import Services, UpstreamFailure, json_body

log = logging.getLogger(__name__)

TRANSPARENT_PIXEL = b"".join(
    (
        b"GIF89a",
        b"\x01\x00\x01\x00\x80\x00\x00",  # 1x1 screen, a global colour table of 2 entries
        b"\x00\x00\x00\xff\xff\xff",  # the table: black, white
        b"\x21\xf9\x04\x01\x00\x00\x00\x00",  # graphic control: colour 0 is transparent
        b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00",  # one 1x1 image at 0,0
        b"\x02\x02\x44\x01\x00",  # its LZW data (minimum code size 2): clear, pixel 0, end
        b"\x3b",  # trailer
    )
)
"""The open pixel: a 1x1 transparent GIF (43 bytes)."""
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
"""Every open fetches the pixel again: a cached pixel would hide opens after the first."""
REDIRECT_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def tracking_router(settings: GatewaySettings) -> APIRouter:
    """The tracking routes, reading tokens with the platform's link secret."""
    secret = settings.platform.link_secret
    max_age = timedelta(days=settings.link_max_age_days)
    router = APIRouter(include_in_schema=False)

    def claims_of(token: str | None) -> TrackingClaims:
        """What the token says; Refused when it says nothing we can use."""
        if secret is None:
            raise Refused(503, "Not available", "Tracked links are not set up on this server.")
        if not token or len(token) > MAX_TRACKING_TOKEN_LENGTH:
            raise Refused(
                400, "Link incomplete", "This link from one of our messages is incomplete."
            )
        try:
            return read_tracking(secret.get_secret_value(), token, max_age)
        except InvalidLink as error:
            raise Refused(403, "Link not valid", f"Sorry: {error}.") from None

    @router.get(OPEN_PIXEL_PATH)
    async def open_pixel(request: Request, token: TokenQuery = None) -> Response:
        """The open pixel: records that the message was opened, and is a transparent image."""
        try:
            claims = claims_of(token)
        except Refused as refused:
            return PlainTextResponse(refused.message, refused.status, headers=NO_CACHE)
        await record(request, claims.message_id, ReportedOutcome.OPENED, None)
        return Response(TRANSPARENT_PIXEL, media_type="image/gif", headers=NO_CACHE)

    @router.get(CLICK_PATH)
    async def click(request: Request, token: TokenQuery = None) -> Response:
        """A tracked link: records the click and sends the browser on to the signed target."""
        try:
            claims = claims_of(token)
            if claims.target is None:
                raise Refused(400, "Link not valid", "Sorry: this link leads nowhere.")
        except Refused as refused:
            context = {"title": refused.title, "message": refused.message}
            return TEMPLATES.TemplateResponse(
                request, "message.html", context, status_code=refused.status, headers=PAGE_HEADERS
            )
        reason = claims.target[:REPORT_REASON_MAX_LENGTH]
        await record(request, claims.message_id, ReportedOutcome.CLICKED, reason)
        return RedirectResponse(claims.target, 302, headers=REDIRECT_HEADERS)

    return router


async def record(
    request: Request, message_id: str, outcome: ReportedOutcome, reason: str | None
) -> None:
    """Report the outcome to the broadcast service, which records it once; what it cannot
    record is counted and logged, never passed on to the customer."""
    services: Services = request.app.state.services
    path = f"/messages/{quote(message_id, safe='')}/reports"
    report = DeliveryReport(outcome=outcome, reason=reason)
    try:
        answer = await services.send(
            "POST",
            "broadcast",
            path,
            {},
            request.state.request_id,
            report.model_dump_json(exclude_none=True).encode(),
        )
    except UpstreamFailure as failure:
        _lost(outcome, message_id, str(failure))
        return
    body = json_body(answer.content)
    if answer.status == 200 and isinstance(body, dict):
        result = "recorded" if body.get("recorded") else "repeated"
        metrics.TRACKING_REPORTS.labels(outcome.value, result).inc()
    elif answer.status == 404:
        metrics.TRACKING_REPORTS.labels(outcome.value, "unknown").inc()
    else:
        _lost(outcome, message_id, f"HTTP {answer.status}")


def _lost(outcome: ReportedOutcome, message_id: str, why: str) -> None:
    metrics.TRACKING_REPORTS.labels(outcome.value, "failed").inc()
    log.warning(
        "tracking report not recorded",
        extra={"message_id": message_id, "outcome": str(outcome), "reason": why},
    )
