"""Old event versions read as the current ones (upcast on read): a consumer folds one shape.

`crm.contact.logged.v1` carried its department and outcome as free text; v2 has a department
code and an outcome from a closed list. A v1 contact is read as v2 by a tolerant mapping: the
department becomes its slug, and an outcome that names a known value (in any case, with spaces
or hyphens, or a common synonym) becomes that value; any other text becomes `other`. The
original text stays in the event's data. Producers repeat a few texts, so both mappings are
cached: a fold pays a dictionary lookup per contact.

Channel preferences and consents of v1 read as v2 the same way (`channel_preference_v2`,
`consent_recorded`): the rules are in docs/decisions.md ("Preferences, consent with evidence").
"""

from __future__ import annotations

import re
from functools import lru_cache

from crm_shared.contracts.events import (
    REACHABLE_CHANNELS,
    ChannelPreferenceSet,
    ChannelPreferenceSetV2,
    ChannelSetting,
    ConsentCapture,
    ConsentGranted,
    ConsentRecorded,
    ConsentRevoked,
    ConsentState,
    ContactLogged,
    ContactLoggedV2,
    ContactOutcome,
    ContactPurpose,
)

UNKNOWN_DEPARTMENT = "unknown"
"""The code of a v1 department whose text has no letter or digit."""

OUTCOME_SYNONYMS: dict[str, ContactOutcome] = {
    "refusal": ContactOutcome.REFUSED,
    "declined": ContactOutcome.REFUSED,
    "callback": ContactOutcome.CALLBACK_SCHEDULED,
    "call_back": ContactOutcome.CALLBACK_SCHEDULED,
    "no_reply": ContactOutcome.NO_ANSWER,
    "no_response": ContactOutcome.NO_ANSWER,
    "info_given": ContactOutcome.INFORMATION_GIVEN,
    "informed": ContactOutcome.INFORMATION_GIVEN,
    "sold": ContactOutcome.SALE,
    "complaint": ContactOutcome.COMPLAINT_REGISTERED,
    "solved": ContactOutcome.RESOLVED,
    "escalation": ContactOutcome.ESCALATED,
    "transfer": ContactOutcome.TRANSFERRED,
}
"""Free-text outcomes seen in v1 contacts that mean a listed value under another word."""

_SEPARATORS = re.compile(r"[\s-]+")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=4096)
def outcome_from_text(text: str) -> ContactOutcome:
    """The listed outcome a v1 free-text outcome names, `other` when it names none."""
    word = _SEPARATORS.sub("_", text.strip().lower())
    try:
        return ContactOutcome(word)
    except ValueError:
        return OUTCOME_SYNONYMS.get(word, ContactOutcome.OTHER)


@lru_cache(maxsize=4096)
def department_code(text: str) -> str:
    """A v1 department's slug: 'Customer Service' -> 'customer-service'."""
    return _NOT_SLUG.sub("-", text.lower())[:80].strip("-") or UNKNOWN_DEPARTMENT


def contact_logged_v2(contact: ContactLogged | ContactLoggedV2) -> ContactLoggedV2:
    """A contact of either version as v2 (a v2 contact as it is)."""
    if isinstance(contact, ContactLoggedV2):
        return contact
    # Both values are valid by construction, so the model is built without validating again.
    return ContactLoggedV2.model_construct(
        channel=contact.channel,
        direction=contact.direction,
        department=department_code(contact.department),
        employee_id=contact.employee_id,
        topic=contact.topic,
        outcome=outcome_from_text(contact.outcome),
        note=contact.note,
    )


PURPOSE_SYNONYMS: dict[str, ContactPurpose] = {
    "newsletter": ContactPurpose.MARKETING,
    "newsletters": ContactPurpose.MARKETING,
    "promotions": ContactPurpose.MARKETING,
    "promotional": ContactPurpose.MARKETING,
    "offers": ContactPurpose.MARKETING,
    "advertising": ContactPurpose.MARKETING,
    "personalization": ContactPurpose.PERSONALISATION,
    "profiling": ContactPurpose.PERSONALISATION,
    "recommendations": ContactPurpose.PERSONALISATION,
    "support": ContactPurpose.SERVICE,
    "customer_service": ContactPurpose.SERVICE,
    "orders": ContactPurpose.TRANSACTIONAL,
    "receipts": ContactPurpose.TRANSACTIONAL,
}
"""Free-text v1 purposes that name one of the four purposes under another word."""


@lru_cache(maxsize=1024)
def purpose_from_text(text: str) -> ContactPurpose | None:
    """The purpose a v1 free-text purpose names, None when it names none of the four."""
    word = _SEPARATORS.sub("_", text.strip().lower())
    try:
        return ContactPurpose(word)
    except ValueError:
        return PURPOSE_SYNONYMS.get(word)


def consent_recorded(consent: ConsentGranted | ConsentRevoked | ConsentRecorded) -> ConsentRecorded:
    """A consent of either version as v2 (a v2 consent as it is), captured through `api`.

    A v1 purpose that names none of the four is read as marketing, the purpose unlisted texts
    ("newsletter-weekly", "partner offers") nearly always mean: its revocation is a refusal of
    marketing (a refusal must not miss by spelling), its grant only a pending one, which allows
    nothing. The original text is kept as the evidence.
    """
    if isinstance(consent, ConsentRecorded):
        return consent
    purpose = purpose_from_text(consent.purpose)
    granted = isinstance(consent, ConsentGranted)
    if purpose is None:
        state = ConsentState.PENDING if granted else ConsentState.REVOKED
        purpose = ContactPurpose.MARKETING
    else:
        state = ConsentState.GRANTED if granted else ConsentState.REVOKED
    return ConsentRecorded.model_construct(
        purpose=purpose,
        channel=consent.channel,
        state=state,
        capture_method=ConsentCapture.API,
        wording_version=None,
        evidence=f"v1 purpose {consent.purpose!r}"[:500],
    )


def channel_preference_v2(
    preference: ChannelPreferenceSet | ChannelPreferenceSetV2,
) -> ChannelPreferenceSetV2:
    """A channel set-up of either version as v2 (a v2 set-up as it is).

    Each v1 channel gets the record's one quiet window, in that window's time zone, which also
    becomes the customer's; channels the company does not send on (web, store, ...) are dropped,
    so a v1 record may read as a set-up with no channel at all.
    """
    if isinstance(preference, ChannelPreferenceSetV2):
        return preference
    quiet = preference.quiet_hours
    return ChannelPreferenceSetV2.model_construct(
        channels=tuple(
            ChannelSetting.model_construct(
                channel=channel,
                address=None,
                quiet_hours=quiet,
                max_per_day=None,
                max_per_week=None,
                paused_until=None,
            )
            for channel in preference.channels
            if channel in REACHABLE_CHANNELS
        ),
        timezone="UTC" if quiet is None else quiet.timezone,
    )
