-- Refunds are negative signals: a customer counts as a buyer of a product while they kept some of
-- it (units ordered minus units refunded above zero). A refund may be folded before its order, so
-- a row may have no purchase time yet. Rows folded before this migration count their orders as
-- units kept until the projection is rebuilt (`crm rebuild recommendation`).
ALTER TABLE customer_products ADD COLUMN units_kept bigint;
UPDATE customer_products SET units_kept = times_bought;
ALTER TABLE customer_products
    ALTER COLUMN units_kept SET NOT NULL,
    ALTER COLUMN first_bought_at DROP NOT NULL,
    ALTER COLUMN last_bought_at DROP NOT NULL;

-- Similar products are ranked by the cosine of their buyer sets (the offline evaluation's
-- item-kNN), no longer by raw co-buyer counts, which made every product similar to bestsellers.
ALTER TABLE similar_products ADD COLUMN similarity double precision NOT NULL DEFAULT 0;
DROP INDEX similar_products_ranked;
CREATE INDEX similar_products_ranked
    ON similar_products (product_id, similarity DESC, other_product_id);
INSERT INTO dirty_products (product_id) SELECT product_id FROM products WHERE buyers > 0
ON CONFLICT (product_id) DO NOTHING;
