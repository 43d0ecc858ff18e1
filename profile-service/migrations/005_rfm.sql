-- RFM scores of the active population (customers with an order in the currency), per currency.
-- A materialized view, not a table: it is derived from the projection's tables and clocks (not
-- folded from events), so a rebuild compares the tables it is made of, and the worker refreshes
-- it (profile_service.analytics, docs/decisions.md). Recency is measured against the clock of
-- the customer's crm.orders partition (the replayable clock), or the newest tick of any
-- partition, or with no tick yet the newest purchase: never the wall clock.
-- Scores 1-5 by quintile: 1 + floor(5 * percent_rank), capped at 5; ties share a score.
CREATE MATERIALIZED VIEW rfm_scores AS
WITH active AS (
    SELECT t.customer_id, t.currency, t.orders AS frequency, t.net_revenue AS monetary,
           t.last_purchase_at
    FROM customer_currency_totals t
    WHERE t.orders > 0
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
