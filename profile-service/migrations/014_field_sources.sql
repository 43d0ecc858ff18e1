-- Provenance: the source system that last set each field, keyed as field_times ('name',
-- 'attributes.tier', 'identifiers.pos'). Records folded before this have none: they are
-- filled as their fields are set again, or at once by a rebuild.
ALTER TABLE customers ADD COLUMN field_sources jsonb NOT NULL DEFAULT '{}';
