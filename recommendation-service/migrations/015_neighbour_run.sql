-- Which neighbour job run last wrote similar_products: a worker keeps what its own whole-catalogue
-- run read and reuses it only while that run is still the last (docs/decisions.md, "Whole-catalogue
-- runs from the worker's memory"). Computed by the jobs (the recommendation's rebuild rules): a rebuild
-- does not compare it, and a rebuilt schema starts without a run, so the job reads everything again.
CREATE TABLE computed_neighbour_run (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    run uuid NOT NULL
);
