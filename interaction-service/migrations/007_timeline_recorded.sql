-- The late arrivals since a read (`recorded_after`, what a client holding a cursor fetches to
-- catch up): by recording time, so the read takes the few rows recorded since then instead of
-- walking the customer's whole timeline in event-time order and filtering.
CREATE INDEX timeline_customer_recorded ON timeline (customer_id, recorded_at);
