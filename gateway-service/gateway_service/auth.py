"""API keys: their format, how they are hashed and checked, and the scopes they grant. Pure.

A key reads `crm_<key_id>_<secret>`. The key id is public (it names the key in logs and in
`keys list`); the secret is random and only its sha256 is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import TypeAdapter, ValidationError

from crm_shared.contracts.events import EventSource

CUSTOMERS_READ = "customers:read"
EVENTS_WRITE = "events:write"
ANALYTICS_READ = "analytics:read"
"""Figures across customers (top customers, the cube, RFM segment sizes)."""
CUSTOMERS_MERGE = "customers:merge"
"""Merging customer records into one person, and splitting them again."""
ANALYTICS_WRITE = "analytics:write"
"""Asking for analysis work (fitting the lifetime-value model again)."""
RECOMMENDATIONS_READ = "recommendations:read"
RECOMMENDATIONS_TRAIN = "recommendations:train"
SEGMENTS_READ = "segments:read"
"""Operator segments: definitions, sizes, members (who is in them) and a customer's segments."""
SEGMENTS_WRITE = "segments:write"
"""Define, redefine and retire operator segments."""
CASES_READ = "cases:read"
"""Cases (requests, questions, complaints), their figures and the department views."""
CASES_WRITE = "cases:write"
"""Open cases and move them through their steps (as events on crm.cases)."""
EXPERIENCE_READ = "experience:read"
"""The voice of the customer and the journey: ratings, stages, trends across customers."""
EXPERIENCE_WRITE = "experience:write"
"""Record a customer's feedback (CSAT, NPS, effort scores, as events on crm.contacts)."""
PREFERENCES_READ = "preferences:read"
"""A customer's channel set-up, consents with evidence, do-not-contact entries, holds, and the
contact decision with its reasons."""
PREFERENCES_WRITE = "preferences:write"
"""Set a customer's channels, record consents and do-not-contact entries (as events)."""
CAMPAIGNS_READ = "campaigns:read"
"""Campaigns and newsletters with their reasons and progress, and dry runs."""
CAMPAIGNS_WRITE = "campaigns:write"
"""Define and cancel campaigns and newsletters (which message customers)."""
DELIVERIES_WRITE = "deliveries:write"
"""Report what became of a message (delivery providers' callbacks): a bounce, an unsubscribe or
a complaint stops contact."""
SCOPES = frozenset(
    {
        CUSTOMERS_READ,
        EVENTS_WRITE,
        ANALYTICS_READ,
        ANALYTICS_WRITE,
        CUSTOMERS_MERGE,
        RECOMMENDATIONS_READ,
        RECOMMENDATIONS_TRAIN,
        SEGMENTS_READ,
        SEGMENTS_WRITE,
        CASES_READ,
        CASES_WRITE,
        EXPERIENCE_READ,
        EXPERIENCE_WRITE,
        PREFERENCES_READ,
        PREFERENCES_WRITE,
        CAMPAIGNS_READ,
        CAMPAIGNS_WRITE,
        DELIVERIES_WRITE,
    }
)

KEY_PREFIX = "crm"
_KEY_ID = re.compile(r"^[0-9a-f]{8,64}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{16,256}$")
_SOURCE: TypeAdapter[str] = TypeAdapter(EventSource)

REALM = 'Bearer realm="crm-gateway"'
"""WWW-Authenticate challenge when no key was sent (RFC 6750)."""
INVALID_TOKEN = f'{REALM}, error="invalid_token"'
"""WWW-Authenticate challenge when the key sent is not a working key."""


class Unauthorized(Exception):
    """No usable key: the message says why, `challenge` goes into WWW-Authenticate."""

    def __init__(self, message: str, challenge: str = INVALID_TOKEN) -> None:
        super().__init__(message)
        self.challenge = challenge


class Forbidden(Exception):
    """A working key without the scope the endpoint needs."""


@dataclass(frozen=True)
class PresentedKey:
    key_id: str
    secret: str


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    name: str
    key_hash: str
    scopes: frozenset[str]
    sources: frozenset[str]
    """The CloudEvents sources the key may publish as."""
    created_at: datetime
    revoked_at: datetime | None = None


def format_key(key_id: str, secret: str) -> str:
    """The key as handed to its owner, once."""
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def hash_secret(secret: str) -> str:
    # A plain sha256 is enough here: the secret is 256 random bits (secrets.token_urlsafe), so
    # even a leaked hash cannot be brute-forced. Slow hashes (bcrypt, argon2) exist for
    # low-entropy passwords; they would only add tens of milliseconds to every request.
    return hashlib.sha256(secret.encode()).hexdigest()


def _names(text: str | Iterable[str]) -> frozenset[str]:
    """The distinct non-blank names of a comma-separated list (or of a list), stripped."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return frozenset(item.strip() for item in items if item.strip())


def parse_scopes(text: str | Iterable[str]) -> frozenset[str]:
    """Scopes from 'customers:read,events:write' (or a list); unknown or none is a ValueError."""
    scopes = _names(text)
    if not scopes:
        raise ValueError(f"give at least one scope of {', '.join(sorted(SCOPES))}")
    unknown = scopes - SCOPES
    if unknown:
        raise ValueError(
            f"unknown scope {', '.join(sorted(unknown))}; known: {', '.join(sorted(SCOPES))}"
        )
    return scopes


def parse_sources(text: str | Iterable[str], scopes: Collection[str]) -> frozenset[str]:
    """The sources a key may publish as, from 'shop,pos' (or a list), each a valid CloudEvents
    source under the event contract. A key that writes events needs at least one, so that it
    cannot claim another system's event ids; a key that does not write has none."""
    sources = _names(text)
    for source in sorted(sources):
        try:
            _SOURCE.validate_python(source)
        except ValidationError as error:
            problem = error.errors(include_url=False)[0]["msg"]
            raise ValueError(f"invalid source {source!r}: {problem}") from None
    if EVENTS_WRITE in scopes and not sources:
        raise ValueError(
            f"a key with the scope {EVENTS_WRITE} needs the sources it may publish as, "
            "e.g. shop,pos"
        )
    if sources and EVENTS_WRITE not in scopes:
        raise ValueError(f"sources are for keys with the scope {EVENTS_WRITE}, and this has none")
    return sources


def presented_key(authorization: str | None, api_key: str | None) -> str:
    """The key from `Authorization: Bearer <key>` (preferred) or `X-API-Key: <key>`."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        if not api_key:
            raise Unauthorized("the Authorization header must read 'Bearer <API key>'")
    if api_key and api_key.strip():
        return api_key.strip()
    raise Unauthorized(
        "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        challenge=REALM,
    )


def parse_key(text: str) -> PresentedKey:
    """Split `crm_<key_id>_<secret>`; anything else is not one of our keys."""
    prefix, _, rest = text.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or not _KEY_ID.match(key_id) or not _SECRET.match(secret):
        raise Unauthorized("the API key is malformed: expected crm_<key id>_<secret>")
    return PresentedKey(key_id=key_id, secret=secret)


def check_key(presented: PresentedKey, stored: StoredKey | None) -> StoredKey:
    """The stored key if the secret matches and the key is not revoked."""
    if stored is None or not hmac.compare_digest(hash_secret(presented.secret), stored.key_hash):
        raise Unauthorized("the API key is not valid")
    # Only someone holding the real secret learns that the key was revoked.
    if stored.revoked_at is not None:
        raise Unauthorized(
            f"the API key {stored.key_id} was revoked at {stored.revoked_at.isoformat()}"
        )
    return stored


def check_scope(key: StoredKey, scope: str) -> None:
    """Raise Forbidden, naming the scope, when the key does not grant it."""
    if scope not in key.scopes:
        granted = ", ".join(sorted(key.scopes)) or "none"
        raise Forbidden(
            f"the API key {key.key_id} lacks the scope {scope!r} (it grants: {granted})"
        )


@dataclass
class KeyCache:
    """Stored keys by id, each kept for `ttl` seconds after it was read, so that a request need
    not ask PostgreSQL: a revocation takes effect within `ttl`. Only keys that exist are kept
    (their number is the number of keys issued), and the secret is still checked every time.
    Pure: the caller passes the (monotonic) time in."""

    ttl: float
    _entries: dict[str, tuple[StoredKey, float]] = field(default_factory=dict)

    def get(self, key_id: str, now: float) -> StoredKey | None:
        """The key read less than `ttl` seconds ago, or None."""
        entry = self._entries.get(key_id)
        if entry is None:
            return None
        key, read_at = entry
        if not 0 <= now - read_at < self.ttl:  # expired, or the clock stepped back
            del self._entries[key_id]
            return None
        return key

    def put(self, key: StoredKey, now: float) -> None:
        if self.ttl > 0:
            self._entries[key.key_id] = (key, now)
