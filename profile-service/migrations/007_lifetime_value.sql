-- Lifetime value and churn (profile_service.lifetime, docs/decisions.md). Models fitted by the
-- worker from the commerce facts at wall-clock times, not folded from events: a rebuild's shadow
-- holds none (the profile's rebuild rules keep them out of its comparison), and the worker fits again.
-- A fit writes a new version with its parameters and every customer's predictions, and makes it
-- the current one, in one transaction: readers see the old version or the new, never a mix.
-- Older versions and their parameters stay as the history of fits; their predictions go. No
-- foreign keys: a rebuild turns each table unlogged and back one by one.
CREATE TABLE fitted_lifetime_models (
    version      bigint           PRIMARY KEY,
    fitted_at    timestamptz      NOT NULL,
    as_of        timestamptz,
    horizon_days integer          NOT NULL,
    fit_seconds  double precision NOT NULL,
    trigger      text             NOT NULL,
    skipped      jsonb            NOT NULL DEFAULT '{}',
    current      boolean          NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX fitted_lifetime_models_current ON fitted_lifetime_models (current)
    WHERE current;

CREATE TABLE fitted_lifetime_parameters (
    version          bigint           NOT NULL,
    currency         text             NOT NULL,
    customers        integer          NOT NULL,
    repeat_customers integer          NOT NULL,
    r                double precision NOT NULL,
    alpha            double precision NOT NULL,
    a                double precision NOT NULL,
    b                double precision NOT NULL,
    p                double precision NOT NULL,
    q                double precision NOT NULL,
    gamma            double precision NOT NULL,
    PRIMARY KEY (version, currency)
);

-- The customer's history as the model read it, beside what it predicts (the reasons are worded
-- from both when read).
CREATE TABLE fitted_lifetime_predictions (
    version            bigint           NOT NULL,
    customer_id        text             NOT NULL,
    currency           text             NOT NULL,
    repeat_purchases   integer          NOT NULL,
    span_days          double precision NOT NULL,
    age_days           double precision NOT NULL,
    mean_repeat_spend  double precision,
    probability_alive  double precision NOT NULL,
    expected_purchases double precision NOT NULL,
    expected_spend     double precision NOT NULL,
    PRIMARY KEY (customer_id, currency, version)
);

-- Refits asked for through the API; the worker takes them on its next look.
CREATE TABLE fitted_lifetime_requests (
    id           bigserial   PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now(),
    version      bigint
);
CREATE INDEX fitted_lifetime_requests_pending ON fitted_lifetime_requests (id) WHERE version IS NULL;
