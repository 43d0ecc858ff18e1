-- Campaigns and newsletters as defined on crm.campaigns: last definition wins by event time
-- until the campaign is planned; then it is fixed (the plan is in outbound_messages).
CREATE TABLE campaigns (
    campaign_id   text        PRIMARY KEY,
    name          text        NOT NULL,
    kind          text        NOT NULL,
    purpose       text        NOT NULL,
    definition    jsonb       NOT NULL,  -- the crm.campaign.defined.v1 data, as defined
    send_at       timestamptz NOT NULL,  -- the schedule, or the definition's time if immediate
    state         text        NOT NULL DEFAULT 'scheduled'
        CHECK (state IN ('scheduled', 'planned', 'cancelled')),
    defined_at    timestamptz NOT NULL,
    source        text        NOT NULL,
    event_id      text        NOT NULL,
    planned_at    timestamptz,           -- the decision instant of the plan
    plan_seconds  double precision,
    cancelled_at  timestamptz,
    cancel_reason text
);
CREATE INDEX campaigns_due ON campaigns (send_at) WHERE state = 'scheduled';

-- How many recipients of a campaign each decision reason covered (planned ones included).
CREATE TABLE campaign_reasons (
    campaign_id text   NOT NULL REFERENCES campaigns ON DELETE CASCADE,
    reason      text   NOT NULL,
    planned     boolean NOT NULL,
    recipients  bigint NOT NULL,
    PRIMARY KEY (campaign_id, reason)
);

-- Each customer's latest recommendations from crm.recommendations (highest version wins).
CREATE TABLE customer_recommendations (
    customer_id  text        PRIMARY KEY,
    picks        jsonb       NOT NULL,  -- [{product_id, description, reason}], best first
    new_products jsonb       NOT NULL,
    version      bigint      NOT NULL,
    changed_at   timestamptz NOT NULL
);

-- Names and addresses from crm.customers, for personalisation and the channels' addresses:
-- fields are taken from newer events only, and an absent field keeps its value.
CREATE TABLE customer_contacts (
    customer_id text        PRIMARY KEY,
    name        text,
    email       text,
    phone       text,
    changed_at  timestamptz NOT NULL
);
