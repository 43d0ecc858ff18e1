-- order_entries' segments and lines were written as JSON text inside jsonb (a string holding
-- '["vip"]'); they are now written as jsonb arrays, the batch as one JSON parameter
-- (docs/decisions.md, "Cancelled orders count as not bought in recommendations"). Rows written
-- before are unwrapped so that a cancellation reads them alike.
UPDATE order_entries SET segments = (segments #>> '{}')::jsonb WHERE jsonb_typeof(segments) = 'string';
UPDATE order_entries SET lines = (lines #>> '{}')::jsonb WHERE jsonb_typeof(lines) = 'string';
