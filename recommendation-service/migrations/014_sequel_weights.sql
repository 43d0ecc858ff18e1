-- The served blend has a sequel part (docs/decisions.md, "Recommendations: sequels"): like
-- EASE, each version keeps per product the largest weights towards others, so EASE's table
-- becomes one for both parts, told apart by `part` ('ease' or 'sequel').
ALTER TABLE model_ease RENAME TO model_item_weights;
ALTER TABLE model_item_weights ADD COLUMN part text NOT NULL DEFAULT 'ease';
ALTER TABLE model_item_weights ALTER COLUMN part DROP DEFAULT;
ALTER TABLE model_item_weights DROP CONSTRAINT model_ease_pkey;
ALTER TABLE model_item_weights ADD PRIMARY KEY (version, part, product_id, other_product_id);
