-- Events naming a customer by an identifier (subject `email:ann@example.com`, profile_service
-- .references): the facts stay under the reference, a record of its own, and this table says
-- which identifier each such alias names (its value normalised), so that it counts for the
-- customer holding that identifier, derived when read like a merge (docs/decisions.md).
CREATE TABLE identifier_aliases (
    record_id text PRIMARY KEY,
    system    text NOT NULL,
    value     text NOT NULL
);
CREATE INDEX identifier_aliases_identifier ON identifier_aliases (system, value);

-- Who is one person, for the analyses across customers (RFM, top customers, the cube): every
-- record of a person made of more than one record (merged or aliased), its root included, with
-- the person's id. Computed by the worker from merge_statements, identifier_aliases and the
-- identifier claims before each refresh of the RFM scores (profile_service.identity.persons);
-- a record without a row is a person of its own. Not folded: a rebuild does not compare it.
CREATE TABLE computed_persons (
    record_id text PRIMARY KEY,
    person_id text NOT NULL
);

-- RFM scores per person rather than per record: the facts of a person's records are added up
-- before the population is ranked. Otherwise as 005_rfm.sql: recency by the clock of the
-- person's (root record's) crm.orders partition, else the newest tick, else the newest purchase.
DROP MATERIALIZED VIEW rfm_scores;
CREATE MATERIALIZED VIEW rfm_scores AS
WITH person_facts AS (
    SELECT coalesce(p.person_id, f.customer_id) AS customer_id, f.currency, f.orders, f.revenue,
           f.at
    FROM revenue_facts f
    LEFT JOIN computed_persons p ON p.record_id = f.customer_id
),
active AS (
    SELECT customer_id, currency, sum(orders)::bigint AS frequency, sum(revenue) AS monetary,
           max(at) FILTER (WHERE orders = 1) AS last_purchase_at
    FROM person_facts
    GROUP BY customer_id, currency
    HAVING sum(orders) > 0
),
clocked AS (
    SELECT a.*,
           coalesce(
               pc.now,
               (SELECT max(now) FROM partition_clocks WHERE topic = 'crm.orders'),
               max(a.last_purchase_at) OVER ()
           ) AS as_of
    FROM active a
    LEFT JOIN purchase_totals p ON p.customer_id = a.customer_id
    LEFT JOIN partition_clocks pc ON pc.topic = 'crm.orders' AND pc.partition = p.orders_partition
),
measured AS (
    SELECT c.*,
           round(greatest(0, extract(epoch FROM c.as_of - c.last_purchase_at) / 86400), 2)
               AS recency_days
    FROM clocked c
)
SELECT customer_id, currency, recency_days, frequency, monetary, last_purchase_at, as_of,
       least(5, 1 + floor(5 * percent_rank() OVER (
           PARTITION BY currency ORDER BY recency_days DESC)))::int AS r,
       least(5, 1 + floor(5 * percent_rank() OVER (
           PARTITION BY currency ORDER BY frequency)))::int AS f,
       least(5, 1 + floor(5 * percent_rank() OVER (
           PARTITION BY currency ORDER BY monetary)))::int AS m
FROM measured;
CREATE UNIQUE INDEX rfm_scores_key ON rfm_scores (currency, customer_id);
CREATE INDEX rfm_scores_customer ON rfm_scores (customer_id);

-- Refunds and items beside the money, so that a customer's purchase block (counts across
-- currencies) and its per-currency totals come from one read of the same facts: items signed
-- like the money (an order's are added, a refund's taken off). Columns appended: the views keep
-- their columns and order.
CREATE OR REPLACE VIEW revenue_facts AS
SELECT o.customer_id, o.placed_at AS at, o.channel, o.currency, 1 AS orders, o.amount AS revenue,
       o.items
FROM orders o
WHERE NOT EXISTS (
    SELECT 1 FROM order_cancellations c
    WHERE c.customer_id = o.customer_id AND c.order_id = o.order_id
)
UNION ALL
SELECT r.customer_id, r.refunded_at, o.channel, r.currency, 0, -r.amount, -r.items
FROM refunds r
LEFT JOIN orders o
    ON o.customer_id = r.customer_id AND o.order_id = r.order_id AND o.currency = r.currency
WHERE NOT EXISTS (
    SELECT 1 FROM order_cancellations c
    WHERE c.customer_id = r.customer_id AND c.order_id = r.order_id
);

CREATE OR REPLACE VIEW customer_currency_totals AS
SELECT customer_id, currency,
       sum(orders)::bigint                                     AS orders,
       coalesce(sum(revenue) FILTER (WHERE orders = 1), 0)     AS gross_revenue,
       coalesce(-sum(revenue) FILTER (WHERE orders = 0), 0)    AS refunded,
       sum(revenue)                                            AS net_revenue,
       min(at) FILTER (WHERE orders = 1)                       AS first_purchase_at,
       max(at) FILTER (WHERE orders = 1)                       AS last_purchase_at,
       count(*) FILTER (WHERE orders = 0)                      AS refunds,
       sum(items)::bigint                                      AS items
FROM revenue_facts
GROUP BY customer_id, currency;
