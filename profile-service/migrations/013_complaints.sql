-- Complaint cases the interaction service announced open (crm.complaint.opened.v1), so that a
-- segment rule can count them ("at least 3 complaints in 90 days"). A case counts once, from
-- its earliest opening: a reopened complaint is the same complaint.
CREATE TABLE complaints (
    customer_id text        NOT NULL,
    case_id     text        NOT NULL,
    opened_at   timestamptz NOT NULL,
    PRIMARY KEY (customer_id, case_id)
);
