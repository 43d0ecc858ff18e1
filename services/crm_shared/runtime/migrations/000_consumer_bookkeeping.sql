-- Bookkeeping every projection database carries, written in the same transaction as the view.

-- Next offset to read per partition: a restarted or rebalanced worker resumes from here.
CREATE TABLE IF NOT EXISTS consumer_positions (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Every event folded, by its idempotency key (source, id): a second copy changes nothing.
CREATE TABLE IF NOT EXISTS applied_events (
    source     text        NOT NULL,
    id         text        NOT NULL,
    type       text        NOT NULL,
    event_time timestamptz NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (source, id)
);
