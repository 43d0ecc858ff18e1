"""Metrics of the profile service, beside the shared crm_* worker and HTTP metrics."""

from prometheus_client import Counter

MONEY_FOLDED = Counter(
    "crm_profile_money_folded",
    "Order and refund amounts folded into purchase totals (in the order currency)",
    ["kind"],
)
CUSTOMERS_CHANGED = Counter(
    "crm_profile_customer_records_changed", "Customer records written by the worker"
)
SEGMENT_CHANGES = Counter(
    "crm_profile_segment_changes", "Customers who entered or left a segment", ["segment"]
)
