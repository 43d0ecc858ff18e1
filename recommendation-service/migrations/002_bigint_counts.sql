-- Counts that grow with every order or view become bigint: a popular product's orders, and a
-- shared customer id's (a till's anonymous "walk-in" customer) purchases and views of one product.
-- Distinct-buyer counts (products.buyers, co_purchases.buyers) stay integer: they are bounded by
-- the number of customers, not of events.
ALTER TABLE products ALTER COLUMN orders TYPE bigint;
ALTER TABLE customer_products ALTER COLUMN times_bought TYPE bigint;
ALTER TABLE product_views ALTER COLUMN views TYPE bigint;
