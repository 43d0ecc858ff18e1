-- The personalised model as served (issue 9): trained versions of the blend, a pointer to the
-- current one flipped in the transaction that writes every customer's precomputed picks, and
-- the marks and requests that keep them current.

-- One trained version: when (wall clock), on purchases up to data_as_of, with what parameters
-- and how it went. Old versions are pruned when a new one is swapped in.
CREATE SEQUENCE model_version;
CREATE TABLE model_versions (
    version    bigint      PRIMARY KEY DEFAULT nextval('model_version'),
    trained_at timestamptz NOT NULL,
    data_as_of timestamptz NOT NULL,
    parameters jsonb       NOT NULL,
    metrics    jsonb       NOT NULL
);

-- A version's ALS factors and seasonal vote per product: what a customer's picks are computed
-- from between swaps (the item-kNN part reads similar_products, kept live).
CREATE TABLE model_products (
    version    bigint NOT NULL REFERENCES model_versions ON DELETE CASCADE,
    product_id text   NOT NULL,
    factors    real[] NOT NULL,
    seasonal   real   NOT NULL,
    PRIMARY KEY (version, product_id)
);

-- The version served: one row, changed in the swap's transaction.
CREATE TABLE current_model (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint  NOT NULL REFERENCES model_versions
);

-- Each customer's precomputed picks ([{product_id, description, score, reason}], best first)
-- and the version they were computed with: a request reads this one row.
CREATE TABLE customer_picks (
    customer_id text        PRIMARY KEY,
    version     bigint      NOT NULL REFERENCES model_versions ON DELETE CASCADE,
    computed_at timestamptz NOT NULL,
    picks       jsonb       NOT NULL
);

-- Customers whose orders or refunds arrived since their picks were computed; `mark` changes with
-- every marking, so the job clears only marks it has seen (as dirty_products).
CREATE SEQUENCE dirty_customers_mark;
CREATE TABLE dirty_customers (
    customer_id text   PRIMARY KEY,
    mark        bigint NOT NULL DEFAULT nextval('dirty_customers_mark')
);

-- Retraining asked for through the API; the trainer answers them with the version it swaps in.
CREATE TABLE retrain_requests (
    request_id   bigserial   PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now(),
    version      bigint,
    answered_at  timestamptz
);
CREATE INDEX retrain_requests_pending ON retrain_requests (request_id) WHERE answered_at IS NULL;
