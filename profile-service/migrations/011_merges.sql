-- Merges and unmerges as statements (profile_service.identity): kept, never rewritten; who is one
-- person is derived from them when read, so an unmerge gives a record its own history back.
CREATE TABLE merge_statements (
    customer_id text        NOT NULL,  -- the record kept: the statement's subject
    other_id    text        NOT NULL,  -- the record merged into it, or split off again
    merged      boolean     NOT NULL,
    reason      text,
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    at          timestamptz NOT NULL,
    PRIMARY KEY (customer_id, event_id)
);
CREATE INDEX merge_statements_other ON merge_statements (other_id);
