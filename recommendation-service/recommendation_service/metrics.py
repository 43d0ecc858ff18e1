"""Metrics of the recommendation service, beside the shared crm_* worker and HTTP metrics."""

from prometheus_client import Counter, Histogram

FIRST_PURCHASES = Counter(
    "crm_recommendation_first_purchases",
    "Customers who became buyers of a product (kept none of it before, some now)",
)
NEIGHBOURS_REFRESHED = Counter(
    "crm_recommendation_neighbours_refreshed",
    "Marked products (gained or lost a buyer) the neighbour job's runs cleared",
)
NEIGHBOUR_LISTS = Counter(
    "crm_recommendation_neighbour_lists",
    "Similar-product lists the neighbour job's incremental runs looked at: computed from buyers' "
    "baskets (marked products, and lists a merge could not settle), merged with the marked "
    "products' new entries, or left unchanged (none of those could enter)",
    ["how"],
)
WHOLE_CATALOGUE_RUNS = Counter(
    "crm_recommendation_whole_catalogue_runs",
    "Neighbour job runs that recomputed every list: from what the worker kept of its previous "
    "such run and the marked goods' buyers (memory), or from every kept pair (database)",
    ["read"],
)
NEIGHBOUR_JOB_SECONDS = Histogram(
    "crm_recommendation_neighbour_job_seconds",
    "Duration of the neighbour job's runs that found products to refresh",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PICKS_REFRESHED = Counter(
    "crm_recommendation_picks_refreshed",
    "Customers whose precomputed picks the picks job recomputed after their own events",
)
MODEL_SWAPS = Counter(
    "crm_recommendation_model_swaps", "Model versions trained and swapped in by the trainer"
)
MODEL_JOB_SECONDS = Histogram(
    "crm_recommendation_model_job_seconds",
    "Duration of a training and swap: fitting, every customer's picks, the swap's transaction",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120),
)
LISTS_PUBLISHED = Counter(
    "crm_recommendation_lists_published",
    "Customers' lists published on crm.recommendations because what they name changed, by "
    "whether they were personal",
    ["personalised"],
)
LISTS_WITHOUT_CONSENT = Counter(
    "crm_recommendation_lists_without_consent",
    "Customers' lists computed from popular goods alone because the customer does not allow "
    "personalisation (refused, pending, or never asked with the default refused)",
)
