-- The voice of the customer and the journey (interaction_service.experience and .journey).

-- Every score, version 1 feedback read as CSAT: the trends, dimensions and gauges aggregate these.
CREATE TABLE ratings (
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    customer_id text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    measure     text        NOT NULL CHECK (measure IN ('csat', 'nps', 'ces')),
    score       smallint    NOT NULL,
    kind        text        NOT NULL,
    channel     text        NOT NULL,
    touchpoint  text        NOT NULL,
    department  text,
    about_kind  text,
    about_id    text,
    comment     text,
    dimensions  jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (source, event_id)
);
CREATE INDEX ratings_customer_time ON ratings (customer_id, occurred_at);
-- The newest rating per channel (the silent-channel alert) and the trends by period.
CREATE INDEX ratings_channel_time ON ratings (channel, occurred_at);
CREATE INDEX ratings_time ON ratings (occurred_at);

-- One journey per customer: the facts its stage is inferred from, the stage and its entry time.
CREATE TABLE journeys (
    customer_id      text        PRIMARY KEY,
    stage            text        NOT NULL,
    entered_at       timestamptz NOT NULL,
    version          bigint      NOT NULL,
    orders           bigint      NOT NULL,
    first_order_at   timestamptz,
    first_order_id   text,
    last_order_at    timestamptz,
    order_partition  integer,
    interested       boolean     NOT NULL,
    last_nps         smallint,
    last_nps_at      timestamptz,
    praised          boolean     NOT NULL,
    first_contact_at timestamptz,
    first_contact_id text
);
-- Who may turn at risk or lost when a tick of their order partition arrives.
CREATE INDEX journeys_inactivity ON journeys (order_partition, last_order_at)
    WHERE stage <> 'lost' AND last_order_at IS NOT NULL;
CREATE INDEX journeys_stage ON journeys (stage);

-- Every stage change, as published on crm.experience.
CREATE TABLE journey_transitions (
    customer_id text        NOT NULL,
    version     bigint      NOT NULL,
    from_stage  text,
    to_stage    text        NOT NULL,
    trigger     text        NOT NULL,
    changed_at  timestamptz NOT NULL,
    PRIMARY KEY (customer_id, version)
);

-- The newest tick of each partition of each topic the worker reads: the journeys' time.
CREATE TABLE experience_clocks (
    topic     text        NOT NULL,
    partition integer     NOT NULL,
    now       timestamptz NOT NULL,
    PRIMARY KEY (topic, partition)
);
