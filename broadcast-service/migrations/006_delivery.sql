-- The sender's side of the ledger. `outbound_messages` (003) says which step each message
-- reached; these say which outcomes were already recorded, so a provider that reports twice,
-- or a sender that records again after a crash, publishes and counts each outcome once.
ALTER TABLE outbound_messages ADD COLUMN provider_reference text;  -- SMTP Message-ID, provider id
-- A claimed message is 'sending' until its lease (next_attempt_at) ends: then a sender that
-- died holding it has let go, and another sender resolves it (see docs/decisions.md).
CREATE INDEX outbound_messages_sending ON outbound_messages (next_attempt_at)
    WHERE state = 'sending';

CREATE TABLE message_outcomes (
    message_id  text        NOT NULL REFERENCES outbound_messages (message_id),
    outcome     text        NOT NULL,  -- a crm.message.outcome.recorded.v1 outcome
    reason      text,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (message_id, outcome)
);

-- Per campaign and channel, how many messages reached each outcome (and 'cancelled'): what the
-- campaign API reports as results. Counted in the transaction that records the outcome.
CREATE TABLE campaign_results (
    campaign_id text   NOT NULL,
    channel     text   NOT NULL,
    outcome     text   NOT NULL,
    messages    bigint NOT NULL,
    PRIMARY KEY (campaign_id, channel, outcome)
);
