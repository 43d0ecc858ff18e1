-- A customer whose consent to personalisation changed is recomputed before the customers whose
-- purchases wait: a revocation must reach the published list within seconds, not behind a
-- backlog of purchases (a bulk load, a replay, a busy hour). The flag stays until the mark clears.
ALTER TABLE dirty_customers ADD COLUMN consent_changed boolean NOT NULL DEFAULT false;
