-- The RFM scores become a table that the worker rebuilds and swaps in (store.refresh_rfm)
-- instead of a materialized view refreshed CONCURRENTLY: every customer's recency moves with
-- the clock, so each concurrent refresh deleted and inserted every row, 5 to 7 times the cost
-- of the scoring itself (docs/decisions.md, "The RFM scores swapped in"). The scoring query
-- stays as 015_persons.sql defined it, now a plain view the refresh reads.
DO $$
BEGIN
    EXECUTE 'CREATE VIEW rfm_scores_computed AS ' || pg_get_viewdef('rfm_scores'::regclass);
END
$$;
DROP MATERIALIZED VIEW rfm_scores;
CREATE TABLE rfm_scores AS SELECT * FROM rfm_scores_computed;
CREATE UNIQUE INDEX rfm_scores_key ON rfm_scores (currency, customer_id);
CREATE INDEX rfm_scores_customer ON rfm_scores (customer_id);
