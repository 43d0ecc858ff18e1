-- How each customer wants to be reached: channels in order of preference and quiet hours.
-- The whole record is last-writer-wins by event time; (source, event_id) break ties.
CREATE TABLE channel_preferences (
    customer_id    text PRIMARY KEY,
    channels       text[]      NOT NULL,
    quiet_start    time,
    quiet_end      time,
    quiet_timezone text,
    set_at         timestamptz NOT NULL,
    source         text        NOT NULL,
    event_id       text        NOT NULL,
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL)
           AND (quiet_start IS NULL) = (quiet_timezone IS NULL))
);

-- The current consent per customer, purpose and channel ('*' = every channel),
-- last-writer-wins by event time; at the same instant a revocation wins over a grant.
CREATE TABLE consents (
    customer_id text        NOT NULL,
    purpose     text        NOT NULL,
    channel     text        NOT NULL,
    granted     boolean     NOT NULL,
    changed_at  timestamptz NOT NULL,
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    PRIMARY KEY (customer_id, purpose, channel)
);

-- Every grant and refusal ever folded, late ones included: a refusal of contact is a fact.
-- Keyed by the event's idempotency key, so a replay adds nothing.
CREATE TABLE consent_history (
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    customer_id text        NOT NULL,
    purpose     text        NOT NULL,
    channel     text        NOT NULL,
    granted     boolean     NOT NULL,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (source, event_id)
);
CREATE INDEX consent_history_customer ON consent_history (customer_id, occurred_at DESC);
