"""What the broadcast service reads: channel set-ups, consents and do-not-contact entries (v1
preferences and consents read as v2), segment membership announced by the profile service, the
holds on promotions the interaction service derives (open complaints, detractor scores), and
campaigns with what personalises them (recommendations, names and addresses)."""

from crm_shared.contracts.events import (
    CAMPAIGN_CANCELLED,
    CAMPAIGN_DEFINED,
    CHANNEL_PREFERENCE_SET_V2,
    CLOCK_TICKED,
    COMPLAINT_CLOSED,
    COMPLAINT_OPENED,
    CONSENT_RECORDED,
    DETRACTOR_SCORED,
    DO_NOT_CONTACT_ADDED,
    DO_NOT_CONTACT_REMOVED,
    RECOMMENDATIONS_REFRESHED,
    SEGMENT_ENTERED,
    SEGMENT_LEFT,
)
from crm_shared.contracts.topics import (
    CAMPAIGNS,
    CASE_SIGNALS,
    CUSTOMERS,
    EXPERIENCE,
    PREFERENCES,
    RECOMMENDATIONS,
    SEGMENTS,
)

TOPICS = (PREFERENCES, SEGMENTS, CASE_SIGNALS, EXPERIENCE, CAMPAIGNS, RECOMMENDATIONS, CUSTOMERS)

PREFERENCE_TYPES = frozenset({"crm.channel_preference.set.v1", CHANNEL_PREFERENCE_SET_V2})
CONSENT_TYPES = frozenset({"crm.consent.granted.v1", "crm.consent.revoked.v1", CONSENT_RECORDED})
DO_NOT_CONTACT_TYPES = frozenset({DO_NOT_CONTACT_ADDED, DO_NOT_CONTACT_REMOVED})
SEGMENT_TYPES = frozenset({SEGMENT_ENTERED, SEGMENT_LEFT})
COMPLAINT_TYPES = frozenset({COMPLAINT_OPENED, COMPLAINT_CLOSED})
DETRACTOR_TYPES = frozenset({DETRACTOR_SCORED})
# Campaigns (crm.campaigns), what personalises them (crm.recommendations; names and addresses
# from crm.customers) and the clock's ticks, which make scheduled campaigns due.
CAMPAIGN_TYPES = frozenset({CAMPAIGN_DEFINED, CAMPAIGN_CANCELLED})
RECOMMENDATION_TYPES = frozenset({RECOMMENDATIONS_REFRESHED})
CONTACT_TYPES = frozenset({"crm.customer.registered.v1", "crm.customer.updated.v1"})
FOLDS = (
    PREFERENCE_TYPES
    | CONSENT_TYPES
    | DO_NOT_CONTACT_TYPES
    | SEGMENT_TYPES
    | COMPLAINT_TYPES
    | DETRACTOR_TYPES
    | CAMPAIGN_TYPES
    | RECOMMENDATION_TYPES
    | CONTACT_TYPES
    | {CLOCK_TICKED}
)
