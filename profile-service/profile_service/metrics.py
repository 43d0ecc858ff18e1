"""Metrics of the profile service, beside the shared crm_* worker and HTTP metrics."""

from prometheus_client import Counter, Gauge, Histogram

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
RFM_CUSTOMERS = Gauge(
    "crm_profile_rfm_customers",
    "Customers in each RFM segment, per currency, as of the last refresh of the scores",
    ["currency", "segment"],
)
RFM_REFRESH_SECONDS = Histogram(
    "crm_profile_rfm_refresh_seconds",
    "Time to recompute every RFM score",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
CUBE_REFRESH_SECONDS = Histogram(
    "crm_profile_cube_refresh_seconds",
    "Time to recompute every cell of the revenue cube, all currencies",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
LIFETIME_MODEL_VERSION = Gauge(
    "crm_profile_lifetime_model_version", "Version of the lifetime-value model in use (0: none)"
)
LIFETIME_MODEL_FITTED = Gauge(
    "crm_profile_lifetime_model_fitted_timestamp_seconds",
    "When the lifetime-value model in use was fitted (Unix time; 0: none)",
)
LIFETIME_CUSTOMERS_SCORED = Gauge(
    "crm_profile_lifetime_customers_scored",
    "Customers the lifetime-value model in use scored, per currency",
    ["currency"],
)
LIFETIME_FIT_SECONDS = Histogram(
    "crm_profile_lifetime_fit_seconds",
    "Time to fit the lifetime-value models and predict every customer (outside the database)",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
