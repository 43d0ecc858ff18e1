"""What the broadcast service reads: channel preferences, consents, and segment membership
announced by the profile service; campaigns and what personalises them. It publishes nothing
yet."""

from crm_shared.contracts.events import (
    CAMPAIGN_CANCELLED,
    CAMPAIGN_DEFINED,
    CLOCK_TICKED,
    RECOMMENDATIONS_REFRESHED,
    SEGMENT_ENTERED,
    SEGMENT_LEFT,
)
from crm_shared.contracts.topics import CAMPAIGNS, CUSTOMERS, PREFERENCES, RECOMMENDATIONS, SEGMENTS

TOPICS = (PREFERENCES, SEGMENTS, CAMPAIGNS, RECOMMENDATIONS, CUSTOMERS)

PREFERENCE_TYPES = frozenset({"crm.channel_preference.set.v1"})
CONSENT_TYPES = frozenset({"crm.consent.granted.v1", "crm.consent.revoked.v1"})
SEGMENT_TYPES = frozenset({SEGMENT_ENTERED, SEGMENT_LEFT})
FOLDS = PREFERENCE_TYPES | CONSENT_TYPES | SEGMENT_TYPES

# Campaigns (crm.campaigns), what personalises them (crm.recommendations; names and addresses
# from crm.customers) and the clock's ticks, which make scheduled campaigns due.
CAMPAIGN_TYPES = frozenset({CAMPAIGN_DEFINED, CAMPAIGN_CANCELLED})
RECOMMENDATION_TYPES = frozenset({RECOMMENDATIONS_REFRESHED})
CONTACT_TYPES = frozenset({"crm.customer.registered.v1", "crm.customer.updated.v1"})
FOLDS = FOLDS | CAMPAIGN_TYPES | RECOMMENDATION_TYPES | CONTACT_TYPES | {CLOCK_TICKED}
