-- Which neighbour job run last wrote similar_products: a worker keeps what its own whole-catalogue
-- run read and reuses it only while that run is still the last (docs/decisions.md, "Whole-catalogue
-- runs from the worker's memory"). A worker-computed table (computed_*): a rebuild does not compare
-- it, and a rebuilt schema starts without a run, so every worker reads everything again.
CREATE TABLE computed_neighbour_run (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    run uuid NOT NULL
);
