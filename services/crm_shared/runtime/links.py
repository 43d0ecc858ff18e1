"""Signed, expiring links in messages: the preference centre, one-click unsubscribe, and the
open pixel and click-tracked links of e-mails.

A customer reaches their preferences from any message without logging in, so the link itself
carries who they are, signed with a secret only the platform knows (itsdangerous, HMAC-SHA256)
and dated, so a leaked link stops working. The broadcast service mints links; the gateway,
which serves the preference centre, reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from urllib.parse import quote, urlsplit

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

LINK_SALT = "crm.preference-link.v1"
"""Separates these signatures from any other use of the same secret."""
TRACKING_SALT = "crm.tracking-link.v1"
"""Tracking links get signatures of their own: a tracked link is often forwarded or shared (a
product page), and it must never open the preference centre of the customer it was sent to."""
OPEN_PIXEL_PATH = "/track/open"
CLICK_PATH = "/track/click"
"""Where the gateway serves the open pixel and the click redirect of tracked e-mails."""
MAX_TRACKING_TOKEN_LENGTH = 4096
"""The longest tracking token the gateway reads; a link whose token would be longer (a very long
target) is left untracked rather than broken."""
_ASCII_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
"""Spaces and control characters, which no address we redirect to may hold."""
DEFAULT_LINK_LIFETIME = timedelta(days=60)
"""Long enough for a newsletter read weeks later; RFC 8058 asks unsubscribe links to last."""


@dataclass(frozen=True)
class LinkClaims:
    """What a link says: whose preferences, and (for unsubscribe) which consent it withdraws."""

    customer_id: str
    purpose: str | None = None
    channel: str | None = None
    message_id: str | None = None


class InvalidLink(ValueError):
    """The link was altered, signed with another secret, or has expired; the message says which."""


@dataclass(frozen=True)
class TrackingClaims:
    """What a tracking link says: the message it was sent in and, for a click, the target the
    redirect leads to (only this signed target: the redirect is never an open redirect)."""

    message_id: str
    target: str | None = None


@lru_cache(maxsize=8)
def _serializer(secret: str, salt: str = LINK_SALT) -> URLSafeTimedSerializer:
    """Made once per secret and use: building one costs as much as a signature, and planning a
    campaign signs a link per message."""
    return URLSafeTimedSerializer(secret, salt=salt)


def sign_link(secret: str, claims: LinkClaims) -> str:
    """A URL-safe token carrying the claims and the time it was made."""
    document = {
        "c": claims.customer_id,
        "p": claims.purpose,
        "ch": claims.channel,
        "m": claims.message_id,
    }
    return str(_serializer(secret).dumps(document))


def read_link(
    secret: str, token: str, max_age: timedelta = DEFAULT_LINK_LIFETIME, now: datetime | None = None
) -> LinkClaims:
    """The claims of a token made with this secret at most `max_age` before `now`."""
    document = _loads(
        _serializer(secret),
        token,
        max_age,
        now,
        "this link has expired: open the preference centre from a newer message",
    )
    if not isinstance(document, dict) or not isinstance(document.get("c"), str):
        raise InvalidLink("this link is not valid: it names no customer")
    return LinkClaims(
        customer_id=document["c"],
        purpose=document.get("p"),
        channel=document.get("ch"),
        message_id=document.get("m"),
    )


def sign_tracking(secret: str, claims: TrackingClaims) -> str:
    """A URL-safe token naming the message (and the click's target), dated like sign_link's."""
    document = {"m": claims.message_id}
    if claims.target is not None:
        document["u"] = claims.target
    return str(_serializer(secret, TRACKING_SALT).dumps(document))


def read_tracking(
    secret: str, token: str, max_age: timedelta = DEFAULT_LINK_LIFETIME, now: datetime | None = None
) -> TrackingClaims:
    """The claims of a tracking token made with this secret at most `max_age` before `now`;
    a target that is not an http(s) address is refused even when signed."""
    document = _loads(
        _serializer(secret, TRACKING_SALT),
        token,
        max_age,
        now,
        "this link has expired: links in our messages work for a limited time",
    )
    if not isinstance(document, dict) or not isinstance(document.get("m"), str):
        raise InvalidLink("this link is not valid: it names no message")
    target = document.get("u")
    if target is not None and not (isinstance(target, str) and is_web_address(target)):
        raise InvalidLink("this link is not valid: it leads nowhere we send people")
    return TrackingClaims(message_id=document["m"], target=target)


def is_web_address(url: str) -> bool:
    """Whether the URL is an absolute http or https address with a host and without spaces or
    control characters: what a tracked link may lead to."""
    if _ASCII_UNSAFE.search(url) or not (url.isascii() or url.isprintable()):
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False


def _loads(
    serializer: URLSafeTimedSerializer,
    token: str,
    max_age: timedelta,
    now: datetime | None,
    expired: str,
) -> object:
    """The signed document of a token at most `max_age` old; InvalidLink saying why not."""
    try:
        if now is None:
            return serializer.loads(token, max_age=int(max_age.total_seconds()))
        document, signed_at = serializer.loads(token, return_timestamp=True)
        if now.astimezone(UTC) - signed_at > max_age:
            raise SignatureExpired("signature age exceeds max_age")
        return document
    except SignatureExpired:
        raise InvalidLink(expired) from None
    except BadSignature:
        raise InvalidLink("this link is not valid: it was altered or not made by us") from None


def link_url(base_url: str, path: str, token: str) -> str:
    """`base_url` + `path` with the token as its query, e.g. .../preferences?token=..."""
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}?token={quote(token, safe='')}"
