-- The contact history: one row per touchpoint (contact, feedback, order, refund), keyed like the
-- event that recorded it, so a replayed event finds its row already there.
CREATE TABLE timeline (
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    customer_id text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('contact', 'feedback', 'order', 'refund')),
    event_type  text        NOT NULL,
    channel     text,
    summary     text        NOT NULL,
    details     jsonb       NOT NULL,
    PRIMARY KEY (source, event_id)
);
-- A customer's timeline in event-time order, ties broken by the event key: what the API pages by.
CREATE INDEX timeline_customer_time ON timeline (customer_id, occurred_at, source, event_id);

-- Per-customer contact summary: counts, sums and extremes only, so events fold in any order.
CREATE TABLE contact_summary (
    customer_id         text        PRIMARY KEY,
    touchpoints         integer     NOT NULL DEFAULT 0,
    contacts            integer     NOT NULL DEFAULT 0,
    inbound             integer     NOT NULL DEFAULT 0,
    outbound            integer     NOT NULL DEFAULT 0,
    refusals            integer     NOT NULL DEFAULT 0,
    complaints          integer     NOT NULL DEFAULT 0,
    feedback            integer     NOT NULL DEFAULT 0,
    feedback_score_sum  bigint      NOT NULL DEFAULT 0,
    first_contact_at    timestamptz,
    last_contact_at     timestamptz,
    first_touchpoint_at timestamptz NOT NULL,
    last_touchpoint_at  timestamptz NOT NULL
);
