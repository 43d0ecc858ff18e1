-- Identifiers follow event time, not processing order (profile_service.projection.identifier_claims):
-- every customer record holding an identifier has a row with the event time that set it, and
-- the owner of a (system, value) is the newest claim. A record that moves to another value drops
-- its row, so a stale identifier no longer finds it.
DELETE FROM customer_identifiers;
ALTER TABLE customer_identifiers DROP CONSTRAINT customer_identifiers_pkey;
ALTER TABLE customer_identifiers ADD COLUMN claimed_at timestamptz NOT NULL;
INSERT INTO customer_identifiers (system, value, customer_id, claimed_at)
SELECT e.key, e.value, c.customer_id,
       coalesce((c.field_times ->> ('identifiers.' || e.key))::timestamptz, c.updated_at)
FROM customers c, jsonb_each_text(c.identifiers) AS e;
ALTER TABLE customer_identifiers ADD PRIMARY KEY (system, value, customer_id);
CREATE INDEX customer_identifiers_owner
    ON customer_identifiers (system, value, claimed_at DESC, customer_id);
