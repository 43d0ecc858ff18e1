-- Merges and unmerges as statements (profile_service.identity): kept, never rewritten; who is one
-- person is derived from them when read, so an unmerge gives a record its own history back.
CREATE TABLE merge_statements (
    customer_id text        NOT NULL,  -- the record merged away, or split off again
    into_id     text        NOT NULL,  -- the record it was merged into, or split from
    merged      boolean     NOT NULL,
    reason      text,
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    at          timestamptz NOT NULL,
    PRIMARY KEY (customer_id, event_id)
);
CREATE INDEX merge_statements_into ON merge_statements (into_id);
