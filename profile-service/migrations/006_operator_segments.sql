-- Operator-defined segments (crm.segment-definitions): the newest definition of each segment by
-- (event time, source, event id), whether it is retired, and its rule as the event carried it.
-- Members are kept in segment_memberships beside the built-in segments (docs/decisions.md).
CREATE TABLE segment_definitions (
    segment        text        PRIMARY KEY,
    description    text,
    rule           jsonb       NOT NULL,
    time_dependent boolean     NOT NULL,
    retired        boolean     NOT NULL,
    changed_at     timestamptz NOT NULL,
    source         text        NOT NULL,
    event_id       text        NOT NULL
);
