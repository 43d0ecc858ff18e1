"""What the broadcast service reads: channel preferences, consents, and segment membership
announced by the profile service. It publishes nothing yet."""

from crm_shared.contracts.events import SEGMENT_ENTERED, SEGMENT_LEFT
from crm_shared.contracts.topics import PREFERENCES, SEGMENTS

TOPICS = (PREFERENCES, SEGMENTS)

PREFERENCE_TYPES = frozenset({"crm.channel_preference.set.v1"})
CONSENT_TYPES = frozenset({"crm.consent.granted.v1", "crm.consent.revoked.v1"})
SEGMENT_TYPES = frozenset({SEGMENT_ENTERED, SEGMENT_LEFT})
FOLDS = PREFERENCE_TYPES | CONSENT_TYPES | SEGMENT_TYPES
