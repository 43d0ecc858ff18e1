-- Who is one person, folded rather than computed by the worker's periodic jobs: the profile's
-- segments (lapsed and operator segments) are evaluated per person as events arrive, so the map
-- must move with the log (profile_service.worker.fold_persons: identity.persons over every
-- standing merge and every alias of a held identifier, recomputed in the fold of a batch that may
-- change it). Rows as computed_persons had them: every record of a person of several records,
-- its root included; a record without a row is a person of its own. Compared by a rebuild.
-- Renamed, not replaced: the RFM scores' view follows the table, and an existing projection
-- starts from the map last computed (the next batch that changes who is one person recomputes it
-- whole; a rebuild derives it from the log).
ALTER TABLE computed_persons RENAME TO person_records;
ALTER INDEX computed_persons_pkey RENAME TO person_records_pkey;
CREATE INDEX person_records_person ON person_records (person_id);
