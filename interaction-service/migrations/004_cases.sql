-- Cases (requests, questions, complaints): one row per case as its steps made it, its history
-- of steps (applied or rejected, keyed like the step's event), and the SLA targets it missed.
CREATE TABLE cases (
    case_id                 text        PRIMARY KEY,
    customer_id             text        NOT NULL,
    partition               integer     NOT NULL,  -- of crm.cases: whose clock ticks its deadlines
    kind                    text        NOT NULL CHECK (kind IN ('request', 'question', 'complaint')),
    priority                text        NOT NULL CHECK (priority IN ('urgent', 'high', 'normal', 'low')),
    topic                   text        NOT NULL,
    channel                 text        NOT NULL,
    opened_at               timestamptz NOT NULL,
    status                  text        NOT NULL CHECK (status IN ('open', 'assigned', 'resolved', 'closed')),
    department              text        NOT NULL,
    employee_id             text,
    first_response_due      timestamptz NOT NULL,
    resolution_due          timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    first_response_at       timestamptz,
    resolved_at             timestamptz,
    closed_at               timestamptz,
    first_response_breached boolean     NOT NULL,
    resolution_breached     boolean     NOT NULL,
    transfers               integer     NOT NULL,
    agent_transfers         integer     NOT NULL,
    department_transfers    integer     NOT NULL,
    reopens                 integer     NOT NULL,
    escalations             integer     NOT NULL,
    escalation_level        integer     NOT NULL,
    first_contact_claimed   boolean,
    resolution              text,
    repeat_of               text,
    contact_id              text,
    order_id                text,
    stints                  jsonb       NOT NULL  -- [{department, employee_id, started_at, ended_at}]
);
CREATE INDEX cases_customer ON cases (customer_id, opened_at);
-- What a tick scans: the cases of its partition still being handled, by deadline.
CREATE INDEX cases_active_by_partition ON cases (partition, resolution_due)
    WHERE status IN ('open', 'assigned');
CREATE INDEX cases_active_by_department ON cases (department, opened_at)
    WHERE status IN ('open', 'assigned');

CREATE TABLE case_steps (
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    case_id     text        NOT NULL,
    customer_id text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    step        text        NOT NULL,
    accepted    boolean     NOT NULL,
    reason      text,
    details     jsonb       NOT NULL,
    PRIMARY KEY (source, event_id)
);
CREATE INDEX case_steps_case ON case_steps (case_id, occurred_at);

CREATE TABLE case_breaches (
    case_id     text        NOT NULL,
    target      text        NOT NULL CHECK (target IN ('first_response', 'resolution')),
    customer_id text        NOT NULL,
    due_at      timestamptz NOT NULL,
    priority    text        NOT NULL,
    department  text        NOT NULL,
    PRIMARY KEY (case_id, target)
);
CREATE INDEX case_breaches_department ON case_breaches (department);
