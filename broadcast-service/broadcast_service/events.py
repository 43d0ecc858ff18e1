"""What the broadcast service reads: channel preferences and consents. It publishes nothing yet."""

from crm_shared.topics import PREFERENCES

TOPICS = (PREFERENCES,)

PREFERENCE_TYPES = frozenset({"crm.channel_preference.set.v1"})
CONSENT_TYPES = frozenset({"crm.consent.granted.v1", "crm.consent.revoked.v1"})
FOLDS = PREFERENCE_TYPES | CONSENT_TYPES
