-- What customers tell of the brand and its competitors (profile_service.opinions): one row per
-- statement, keyed by its event, never overwritten; counted across customers when read.
CREATE TABLE customer_opinions (
    customer_id  text        NOT NULL,
    event_id     text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('dislike', 'competitor_purchase', 'declined')),
    topic        text        NOT NULL,
    topic_key    text        NOT NULL,
    reason       text,
    competitor   text,
    about        text,
    comment      text,
    captured_via text        NOT NULL,
    source       text        NOT NULL,
    stated_at    timestamptz NOT NULL,
    PRIMARY KEY (customer_id, event_id)
);
CREATE INDEX customer_opinions_by_topic ON customer_opinions (kind, topic_key, stated_at);
