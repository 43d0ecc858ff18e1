-- Segment membership as the profile service announces it on crm.segments: the highest version
-- of a customer's membership of a segment wins, whatever order the announcements arrive in.
CREATE TABLE segment_memberships (
    customer_id text        NOT NULL,
    segment     text        NOT NULL,
    member      boolean     NOT NULL,
    version     integer     NOT NULL,
    changed_at  timestamptz NOT NULL,
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    PRIMARY KEY (customer_id, segment)
);
CREATE INDEX segment_memberships_members ON segment_memberships (segment, customer_id) WHERE member;
