-- Every case step is a touchpoint on the customer's timeline (kind 'case'). Steps folded before
-- this migration are in case_steps only; `./crm rebuild interaction --force` puts them on the
-- timeline as well (the rebuilt timeline differs from the live one by exactly those rows).
ALTER TABLE timeline DROP CONSTRAINT timeline_kind_check;
ALTER TABLE timeline ADD CONSTRAINT timeline_kind_check CHECK (kind IN (
    'contact', 'feedback', 'order', 'refund', 'cancellation', 'session', 'message', 'consent',
    'preference', 'case'
));
