-- The served blend includes EASE (docs/decisions.md, "Recommendations: the EASE blend served"):
-- each version keeps its products' EASE weights, the `EaseParameters.kept` largest in absolute
-- value per product among the most-bought goods; pruned with their version.
CREATE TABLE model_ease (
    version          bigint NOT NULL REFERENCES model_versions ON DELETE CASCADE,
    product_id       text   NOT NULL,
    other_product_id text   NOT NULL,
    weight           real   NOT NULL,
    PRIMARY KEY (version, product_id, other_product_id)
);
