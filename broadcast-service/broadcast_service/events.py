"""What the broadcast service reads: channel set-ups, consents and do-not-contact entries (v1
preferences and consents read as v2), segment membership announced by the profile service, and
the holds on promotions the interaction service derives (open complaints, detractor scores)."""

from crm_shared.contracts.events import (
    CHANNEL_PREFERENCE_SET_V2,
    COMPLAINT_CLOSED,
    COMPLAINT_OPENED,
    CONSENT_RECORDED,
    DETRACTOR_SCORED,
    DO_NOT_CONTACT_ADDED,
    DO_NOT_CONTACT_REMOVED,
    SEGMENT_ENTERED,
    SEGMENT_LEFT,
)
from crm_shared.contracts.topics import CASE_SIGNALS, EXPERIENCE, PREFERENCES, SEGMENTS

TOPICS = (PREFERENCES, SEGMENTS, CASE_SIGNALS, EXPERIENCE)

PREFERENCE_TYPES = frozenset({"crm.channel_preference.set.v1", CHANNEL_PREFERENCE_SET_V2})
CONSENT_TYPES = frozenset({"crm.consent.granted.v1", "crm.consent.revoked.v1", CONSENT_RECORDED})
DO_NOT_CONTACT_TYPES = frozenset({DO_NOT_CONTACT_ADDED, DO_NOT_CONTACT_REMOVED})
SEGMENT_TYPES = frozenset({SEGMENT_ENTERED, SEGMENT_LEFT})
COMPLAINT_TYPES = frozenset({COMPLAINT_OPENED, COMPLAINT_CLOSED})
DETRACTOR_TYPES = frozenset({DETRACTOR_SCORED})
FOLDS = (
    PREFERENCE_TYPES
    | CONSENT_TYPES
    | DO_NOT_CONTACT_TYPES
    | SEGMENT_TYPES
    | COMPLAINT_TYPES
    | DETRACTOR_TYPES
)
