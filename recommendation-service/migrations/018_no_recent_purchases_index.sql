-- A customer's purchases by recency were read by the co-purchase pairing and by read-time seeds,
-- both gone since the picks are precomputed (2026-11-28): no statement orders a customer's
-- products by `last_bought_at` any more, and the (customer, product) key serves every lookup by
-- customer. One index less on the table every order line upserts (its updates change
-- `last_bought_at`, so none of them was HOT), the largest of the three.
DROP INDEX IF EXISTS customer_products_recent;
