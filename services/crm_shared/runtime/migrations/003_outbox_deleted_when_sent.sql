-- The relay now deletes a row in the transaction that publishes it, instead of marking it sent
-- and pruning it ten minutes later: one dead version a row instead of two, no index entries for
-- the mark, and an outbox as small as its backlog (the interaction's held 124,000 sent rows, 88 MiB,
-- after the bench's 100,000 events, which autovacuum then had to walk).
DELETE FROM outbox WHERE sent_at IS NOT NULL;
DROP INDEX IF EXISTS outbox_sent;
DROP INDEX IF EXISTS outbox_unsent;
ALTER TABLE outbox DROP COLUMN IF EXISTS sent_at;
