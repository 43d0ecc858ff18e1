-- The inverse of crm_shared.runtime.packed.pack_texts: a column of texts sent as one string, its
-- values each after a separator, NULL as the null mark (asyncpg's text[] encoding costs a fold
-- about 0.4 µs of Python an element; this split costs PostgreSQL what decoding the array does).
-- Plain SQL, immutable and not strict, so the planner inlines it into the statement.
CREATE FUNCTION unpack_texts(packed text, separator text, null_mark text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (string_to_array(packed, separator, null_mark))[2:] $$;
