-- The neighbour job recomputes only the lists a change can touch (docs/decisions.md, "Similar
-- products, incrementally and exactly"). It finds the lists that name a marked product from
-- the other side, and reads the last entry of each full list in the lists' own order (ties by
-- code point, as Python orders product codes), whatever the database's collation.
CREATE INDEX similar_products_named ON similar_products (other_product_id, product_id);
CREATE INDEX similar_products_ranked_by_code
    ON similar_products (product_id, similarity DESC, other_product_id COLLATE "C");
