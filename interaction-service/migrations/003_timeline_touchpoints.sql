-- Every touchpoint on the timeline (sessions, messages, consents, preferences, cancellations),
-- each with its structured columns, and the time the log recorded it (for reads "as of" a
-- past instant). Rows folded before this migration are filled in as well as SQL can: their
-- event time stands in for their log time, and a contact's outcome is its listed value only
-- when the text is that value (the synonyms of crm_shared.contracts.upcast are left to a
-- rebuild: `./crm rebuild interaction` gives every row exactly what the fold gives it).
ALTER TABLE timeline DROP CONSTRAINT timeline_kind_check;
ALTER TABLE timeline ADD CONSTRAINT timeline_kind_check CHECK (kind IN (
    'contact', 'feedback', 'order', 'refund', 'cancellation', 'session', 'message', 'consent',
    'preference'
));
ALTER TABLE timeline
    ADD COLUMN recorded_at timestamptz,
    ADD COLUMN direction   text CHECK (direction IN ('inbound', 'outbound')),
    ADD COLUMN department  text,
    ADD COLUMN employee_id text,
    ADD COLUMN topic       text,
    ADD COLUMN outcome     text;
UPDATE timeline SET
    recorded_at = occurred_at,
    direction = CASE WHEN kind = 'contact' THEN details ->> 'direction'
                     WHEN kind IN ('feedback', 'order') THEN 'inbound' END,
    employee_id = details ->> 'employee_id',
    topic = CASE WHEN kind = 'contact' THEN details ->> 'topic'
                 WHEN kind = 'feedback' THEN details ->> 'kind' END,
    department = CASE WHEN kind = 'contact' THEN coalesce(nullif(trim(BOTH '-' FROM left(
                     regexp_replace(lower(details ->> 'department'), '[^a-z0-9]+', '-', 'g'),
                     80)), ''), 'unknown') END,
    outcome = CASE WHEN kind = 'contact' THEN (
        SELECT CASE WHEN said IN ('resolved', 'unresolved', 'escalated', 'transferred',
                                  'callback_scheduled', 'refused', 'no_answer',
                                  'information_given', 'sale', 'complaint_registered')
                    THEN said ELSE 'other' END
        FROM regexp_replace(lower(trim(details ->> 'outcome')), '[\s-]+', '_', 'g') AS said
    ) END;
ALTER TABLE timeline ALTER COLUMN recorded_at SET NOT NULL;

-- The filtered reads: one customer's rows of one kind, channel or department, in event-time
-- order, so a page of a filter reads only the rows it shows.
CREATE INDEX timeline_customer_kind_time
    ON timeline (customer_id, kind, occurred_at, source, event_id);
CREATE INDEX timeline_customer_channel_time
    ON timeline (customer_id, channel, occurred_at, source, event_id) WHERE channel IS NOT NULL;
CREATE INDEX timeline_customer_department_time
    ON timeline (customer_id, department, occurred_at, source, event_id)
    WHERE department IS NOT NULL;
-- No index on recorded_at: a read of what arrived since an instant walks the time index from
-- the newest entry, where what arrived lately mostly is, and each index costs every fold.

-- Page reads are prepared statements, and after five executions PostgreSQL may switch to a
-- generic plan, made without the customer id: it expects a few rows for any customer, and for a
-- customer with 10,000 entries it then fetched and sorted all of them for every page (15 ms of
-- backend CPU instead of under 1). Custom plans, made for the customer asked, cost a fraction of
-- a millisecond to plan. New connections to this database take the setting.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET plan_cache_mode = force_custom_plan',
                   current_database());
END
$$;
