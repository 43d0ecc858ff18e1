"""Signed, expiring links in messages: the preference centre, one-click unsubscribe, and the
open pixel and click-tracked links of e-mails.

A customer reaches their preferences from any message without logging in, so the link itself
carries who they are, signed with a secret only the platform knows and dated, so a leaked link
stops working. The broadcast service mints links (one or more per message, at send time); the
gateway, which serves the preference centre, reads them.

A token is `base64url(the claims as JSON, with their signing time) . base64url(HMAC-SHA256
truncated to 128 bits)`, keyed by the secret and a salt per use. The standard library's HMAC
signs one in about 10 µs, where itsdangerous's serializer (JSON, a zlib attempt and a key
derivation per token) took about 35 µs (docs/decisions.md): a message carries up to a dozen.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

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
CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future a token's signing time may lie: the broadcast service's and the
gateway's clocks may differ a little; a token dated later than that was not made by us."""


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


def sign_link(secret: str, claims: LinkClaims, now: datetime | None = None) -> str:
    """A URL-safe token carrying the claims and the time it was made (`now`, by default the
    current time)."""
    fields = {"p": claims.purpose, "ch": claims.channel, "m": claims.message_id}
    document = {"c": claims.customer_id} | {k: v for k, v in fields.items() if v is not None}
    return _dumps(secret, LINK_SALT, document, now)


def read_link(
    secret: str, token: str, max_age: timedelta = DEFAULT_LINK_LIFETIME, now: datetime | None = None
) -> LinkClaims:
    """The claims of a token made with this secret at most `max_age` before `now`."""
    document = _loads(
        secret,
        LINK_SALT,
        token,
        max_age,
        now,
        "this link has expired: open the preference centre from a newer message",
    )
    if not isinstance(document.get("c"), str):
        raise InvalidLink("this link is not valid: it names no customer")
    return LinkClaims(
        customer_id=document["c"],
        purpose=_text_or_none(document.get("p")),
        channel=_text_or_none(document.get("ch")),
        message_id=_text_or_none(document.get("m")),
    )


def sign_tracking(secret: str, claims: TrackingClaims, now: datetime | None = None) -> str:
    """A URL-safe token naming the message (and the click's target), dated like sign_link's."""
    document = {"m": claims.message_id}
    if claims.target is not None:
        document["u"] = claims.target
    return _dumps(secret, TRACKING_SALT, document, now)


def read_tracking(
    secret: str, token: str, max_age: timedelta = DEFAULT_LINK_LIFETIME, now: datetime | None = None
) -> TrackingClaims:
    """The claims of a tracking token made with this secret at most `max_age` before `now`;
    a target that is not an http(s) address is refused even when signed."""
    document = _loads(
        secret,
        TRACKING_SALT,
        token,
        max_age,
        now,
        "this link has expired: links in our messages work for a limited time",
    )
    if not isinstance(document.get("m"), str):
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


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""Compact, and made once: building an encoder per token cost as much as its HMAC."""


@lru_cache(maxsize=8)
def _key(secret: str, salt: str) -> bytes:
    """The signing key of one use of the secret: a token of one use never verifies as another's
    (a tracking token never opens the preference centre)."""
    return hmac.digest(secret.encode(), salt.encode(), "sha256")


SIGNATURE_BYTES = 16
"""HMAC-SHA256 truncated to 128 bits (as RFC 4868 does for IPsec): forging one is still out of
reach, and a link in an SMS stays short."""


def _signature(secret: str, salt: str, payload: bytes) -> bytes:
    mac = hmac.digest(_key(secret, salt), payload, "sha256")[:SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(mac).rstrip(b"=")


def _dumps(secret: str, salt: str, document: dict[str, Any], now: datetime | None) -> str:
    """The signed token of a document, dated `now` (whole seconds since the epoch, key "t")."""
    signed_at = int((now or datetime.now(UTC)).timestamp())
    text = _JSON.encode(document | {"t": signed_at})
    payload = base64.urlsafe_b64encode(text.encode()).rstrip(b"=")
    return (payload + b"." + _signature(secret, salt, payload)).decode()


def _loads(
    secret: str,
    salt: str,
    token: str,
    max_age: timedelta,
    now: datetime | None,
    expired: str,
) -> dict[str, Any]:
    """The signed document of a token at most `max_age` old; InvalidLink saying why not.

    The signature is compared as text, so no other spelling of the same bytes passes.
    """
    altered = InvalidLink("this link is not valid: it was altered or not made by us")
    payload, _, signature = token.encode("ascii", "replace").rpartition(b".")
    if not hmac.compare_digest(signature, _signature(secret, salt, payload)):
        raise altered
    try:
        document = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        raise altered from None
    if not isinstance(document, dict) or type(document.get("t")) is not int:
        raise altered
    age = (now or datetime.now(UTC)) - datetime.fromtimestamp(document["t"], UTC)
    if age < -CLOCK_SKEW:
        raise altered
    if age > max_age:
        raise InvalidLink(expired)
    return document


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def link_url(base_url: str, path: str, token: str) -> str:
    """`base_url` + `path` with the token as its query, e.g. .../preferences?token=..."""
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}?token={quote(token, safe='')}"
