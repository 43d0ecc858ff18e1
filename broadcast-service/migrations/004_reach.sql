-- Channel set-up v2: per channel its address, quiet hours, caps and pause, in order of
-- preference, and the customer's time zone. v1 rows become v2 here as the upcast reads v1
-- events: each channel the company sends on gets the record's quiet window.
ALTER TABLE channel_preferences
    ADD COLUMN timezone text NOT NULL DEFAULT 'UTC',
    ADD COLUMN settings jsonb NOT NULL DEFAULT '[]';
UPDATE channel_preferences SET
    timezone = coalesce(quiet_timezone, 'UTC'),
    settings = coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'channel', c,
                   'quiet_start', to_char(quiet_start, 'HH24:MI'),
                   'quiet_end', to_char(quiet_end, 'HH24:MI'),
                   'quiet_timezone', quiet_timezone) ORDER BY n)
        FROM unnest(channels) WITH ORDINALITY AS u(c, n)
        WHERE c IN ('email', 'sms', 'phone', 'push', 'mail', 'chat')), '[]'),
    channels = ARRAY(SELECT c FROM unnest(channels) WITH ORDINALITY AS u(c, n)
                     WHERE c IN ('email', 'sms', 'phone', 'push', 'mail', 'chat') ORDER BY n),
    quiet_start = NULL, quiet_end = NULL, quiet_timezone = NULL;

-- Consent v2: granted, pending (double opt-in not confirmed), denied or revoked, with its
-- evidence. `granted` stays, as state = 'granted', for the readers that only ask that.
ALTER TABLE consents
    ADD COLUMN state text,
    ADD COLUMN capture_method text NOT NULL DEFAULT 'api',
    ADD COLUMN wording_version text,
    ADD COLUMN evidence text;
UPDATE consents SET state = CASE WHEN granted THEN 'granted' ELSE 'revoked' END;
ALTER TABLE consents ALTER COLUMN state SET NOT NULL,
    ADD CHECK (state IN ('granted', 'pending', 'denied', 'revoked')),
    ADD CHECK (granted = (state = 'granted'));

ALTER TABLE consent_history
    ADD COLUMN state text,
    ADD COLUMN capture_method text NOT NULL DEFAULT 'api',
    ADD COLUMN wording_version text,
    ADD COLUMN evidence text;
UPDATE consent_history SET state = CASE WHEN granted THEN 'granted' ELSE 'revoked' END;
ALTER TABLE consent_history ALTER COLUMN state SET NOT NULL;

-- Do-not-contact entries per customer and channel ('*' = every channel): listed, or lifted.
-- Last writer wins by event time; at the same instant an entry beats its removal.
CREATE TABLE do_not_contact (
    customer_id text        NOT NULL,
    channel     text        NOT NULL,
    listed      boolean     NOT NULL,
    reason      text CHECK (reason IN ('unsubscribed', 'bounced', 'complaint', 'legal')),
    note        text,
    changed_at  timestamptz NOT NULL,
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    PRIMARY KEY (customer_id, channel),
    CHECK (listed = (reason IS NOT NULL))
);

-- Holds on promotions: each complaint open or not (from crm.case-signals), and each customer's
-- latest detractor score (from crm.experience).
CREATE TABLE complaint_holds (
    customer_id text        NOT NULL,
    case_id     text        NOT NULL,
    open        boolean     NOT NULL,
    changed_at  timestamptz NOT NULL,
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    PRIMARY KEY (customer_id, case_id)
);
CREATE INDEX complaint_holds_open ON complaint_holds (customer_id) WHERE open;

CREATE TABLE detractor_holds (
    customer_id text        PRIMARY KEY,
    measure     text        NOT NULL,
    score       integer     NOT NULL,
    scored_at   timestamptz NOT NULL,
    source      text        NOT NULL,
    event_id    text        NOT NULL
);
