-- Time, as read from the clock's ticks in each partition of each topic (see crm_shared.runtime.clock).
CREATE TABLE partition_clocks (
    topic     text        NOT NULL,
    partition integer     NOT NULL,
    now       timestamptz NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- The partition of crm.orders that carries the customer's orders: its ticks are the customer's time.
ALTER TABLE purchase_totals ADD COLUMN orders_partition integer;
CREATE INDEX purchase_totals_by_partition ON purchase_totals (orders_partition, last_purchase_at);

-- Segment membership; version counts the changes, so consumers order them without clocks.
CREATE TABLE segment_memberships (
    customer_id text        NOT NULL,
    segment     text        NOT NULL,
    member      boolean     NOT NULL,
    version     integer     NOT NULL,
    changed_at  timestamptz NOT NULL,
    PRIMARY KEY (customer_id, segment)
);
CREATE INDEX segment_memberships_members ON segment_memberships (segment, customer_id) WHERE member;
