-- "Customers who bought X also bought Y" is no longer counted as purchases arrive: a first
-- purchase fanned out into up to 100 pair upserts, and the per-customer cap that bounded it made
-- the counts depend on arrival order. Now the fold only marks the products that gained a buyer;
-- a job in the worker recomputes their neighbours from customer_products and keeps the top ones.
DROP TABLE co_purchases;

-- Postage, manual adjustments, fees, gift vouchers... are never recommended nor popular. Rows
-- folded before this migration count as goods until folded again (rebuild to reclassify them).
ALTER TABLE products ADD COLUMN goods boolean NOT NULL DEFAULT true;
DROP INDEX products_popularity;
CREATE INDEX products_popularity ON products (buyers DESC, quantity DESC, product_id) WHERE goods;

-- From a product to its buyers: the job's first step.
CREATE INDEX customer_products_buyers ON customer_products (product_id, customer_id);

-- Each product's most co-bought products (distinct customers who bought both), at most
-- NEIGHBOURS_KEPT per product, ties broken by product code: a function of customer_products
-- alone, so the same whatever the batch boundaries or the job's timing.
CREATE TABLE similar_products (
    product_id       text    NOT NULL,
    other_product_id text    NOT NULL,
    co_buyers        integer NOT NULL,
    PRIMARY KEY (product_id, other_product_id)
);
CREATE INDEX similar_products_ranked
    ON similar_products (product_id, co_buyers DESC, other_product_id);

-- Products that gained a buyer since the job last recomputed them. `mark` changes with every
-- marking, so the job clears only marks it has seen: one set while it ran stays for the next run.
CREATE SEQUENCE dirty_products_mark;
CREATE TABLE dirty_products (
    product_id text   PRIMARY KEY,
    mark       bigint NOT NULL DEFAULT nextval('dirty_products_mark')
);
INSERT INTO dirty_products (product_id) SELECT product_id FROM products WHERE buyers > 0;
