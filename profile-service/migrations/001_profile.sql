-- The customer record: contact fields, free attributes and identifiers in other systems.
-- field_times holds the event time that set each field, so a late event never overwrites a newer one.
CREATE TABLE customers (
    customer_id   text PRIMARY KEY,
    name          text,
    email         text,
    phone         text,
    country       text,
    attributes    jsonb NOT NULL DEFAULT '{}',
    identifiers   jsonb NOT NULL DEFAULT '{}',
    field_times   jsonb NOT NULL DEFAULT '{}',
    registered_at timestamptz,
    updated_at    timestamptz NOT NULL
);

-- Unified identity: find a customer by any id another system knows them by.
CREATE TABLE customer_identifiers (
    system      text NOT NULL,
    value       text NOT NULL,
    customer_id text NOT NULL,
    PRIMARY KEY (system, value)
);
CREATE INDEX customer_identifiers_customer ON customer_identifiers (customer_id);

-- Purchase totals: sums and extremes only, so events fold in any order.
CREATE TABLE purchase_totals (
    customer_id       text PRIMARY KEY,
    orders            integer        NOT NULL DEFAULT 0,
    refunds           integer        NOT NULL DEFAULT 0,
    items             bigint         NOT NULL DEFAULT 0,
    gross_revenue     numeric(16, 4) NOT NULL DEFAULT 0,
    refunded          numeric(16, 4) NOT NULL DEFAULT 0,
    first_purchase_at timestamptz,
    last_purchase_at  timestamptz
);
