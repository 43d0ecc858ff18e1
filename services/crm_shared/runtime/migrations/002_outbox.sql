-- The transactional outbox: events a fold derives, written in the same transaction as the view
-- change and the consumed positions, relayed to Kafka by the worker in seq order, then marked
-- sent and pruned a while later.
CREATE TABLE IF NOT EXISTS outbox (
    seq        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic      text        NOT NULL,
    key        bytea       NOT NULL,
    value      bytea       NOT NULL,
    event_id   text        NOT NULL,
    type       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at    timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
