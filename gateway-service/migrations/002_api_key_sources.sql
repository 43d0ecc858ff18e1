-- A key publishes only as the CloudEvents sources it was issued for, so that no client can take
-- another system's event ids (projections deduplicate by (source, id)). Keys issued before get
-- none: they still read, but a key that publishes must be issued again with its sources.
ALTER TABLE api_keys ADD COLUMN sources text[] NOT NULL DEFAULT '{}';
-- New keys state their sources; the default was only for the keys already there.
ALTER TABLE api_keys ALTER COLUMN sources DROP DEFAULT;
