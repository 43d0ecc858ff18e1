-- The neighbour job recomputes only the lists a change can touch (docs/decisions.md, "Similar
-- products, incrementally"): among them the lists that name a marked product, found from the
-- other side.
CREATE INDEX similar_products_named ON similar_products (other_product_id, product_id);
