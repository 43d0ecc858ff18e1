"""Signed, expiring links in messages: the preference centre and one-click unsubscribe.

A customer reaches their preferences from any message without logging in, so the link itself
carries who they are, signed with a secret only the platform knows (itsdangerous, HMAC-SHA256)
and dated, so a leaked link stops working. The broadcast service mints links; the gateway,
which serves the preference centre, reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from urllib.parse import quote

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

LINK_SALT = "crm.preference-link.v1"
"""Separates these signatures from any other use of the same secret."""
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


@lru_cache(maxsize=8)
def _serializer(secret: str) -> URLSafeTimedSerializer:
    """Made once per secret: building one costs as much as a signature, and planning a campaign
    signs a link per message."""
    return URLSafeTimedSerializer(secret, salt=LINK_SALT)


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
    serializer = _serializer(secret)
    try:
        if now is None:
            document = serializer.loads(token, max_age=int(max_age.total_seconds()))
        else:
            document, signed_at = serializer.loads(token, return_timestamp=True)
            if now.astimezone(UTC) - signed_at > max_age:
                raise SignatureExpired("signature age exceeds max_age")
    except SignatureExpired:
        raise InvalidLink(
            "this link has expired: open the preference centre from a newer message"
        ) from None
    except BadSignature:
        raise InvalidLink("this link is not valid: it was altered or not made by us") from None
    if not isinstance(document, dict) or not isinstance(document.get("c"), str):
        raise InvalidLink("this link is not valid: it names no customer")
    return LinkClaims(
        customer_id=document["c"],
        purpose=document.get("p"),
        channel=document.get("ch"),
        message_id=document.get("m"),
    )


def link_url(base_url: str, path: str, token: str) -> str:
    """`base_url` + `path` with the token as its query, e.g. .../preferences?token=..."""
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}?token={quote(token, safe='')}"
