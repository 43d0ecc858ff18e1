"""Metrics of the recommendation service, beside the shared crm_* worker and HTTP metrics."""

from prometheus_client import Counter

FIRST_PURCHASES = Counter(
    "crm_recommendation_first_purchases",
    "Products bought by a customer for the first time (new distinct buyers)",
)
CO_PURCHASE_INCREMENTS = Counter(
    "crm_recommendation_co_purchase_increments",
    "Co-buyers added to pairs of products (each pair is stored in both directions)",
)
