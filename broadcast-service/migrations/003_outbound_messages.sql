-- Every message the broadcast service means to send or has sent: the plan and the ledger.
-- Campaign planning writes 'planned' rows; the sender claims them, sends through an adapter,
-- and records the step it reached, so a restart redoes only what did not happen. The frequency
-- caps count the 'sent' rows of every campaign together.
CREATE TABLE outbound_messages (
    message_id      text        PRIMARY KEY,  -- deterministic: the same plan gives the same id
    campaign_id     text,                     -- NULL for a one-off message
    customer_id     text        NOT NULL,
    channel         text        NOT NULL,
    address         text        NOT NULL,
    purpose         text        NOT NULL,
    subject         text,
    body_text       text        NOT NULL,
    body_html       text,
    not_before      timestamptz NOT NULL,     -- the schedule or the end of quiet hours
    state           text        NOT NULL DEFAULT 'planned'
        CHECK (state IN ('planned', 'sending', 'sent', 'failed', 'cancelled')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error      text,
    planned_at      timestamptz NOT NULL,
    sent_at         timestamptz,
    CHECK ((state = 'sent') = (sent_at IS NOT NULL))
);
CREATE INDEX outbound_messages_due ON outbound_messages (not_before) WHERE state = 'planned';
CREATE INDEX outbound_messages_sent ON outbound_messages (customer_id, sent_at)
    WHERE state = 'sent';
CREATE INDEX outbound_messages_campaign ON outbound_messages (campaign_id, state);
