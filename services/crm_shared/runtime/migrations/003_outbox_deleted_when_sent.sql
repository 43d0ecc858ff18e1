-- The relay now deletes a row in the transaction that publishes it, instead of marking it sent
-- and pruning it ten minutes later: one dead version a row instead of two, no index entries for
-- the mark, and an outbox as small as its backlog (it held 500,000 sent rows at 2,000 events/s,
-- which autovacuum then had to walk).
DELETE FROM outbox WHERE sent_at IS NOT NULL;
DROP INDEX IF EXISTS outbox_sent;
DROP INDEX IF EXISTS outbox_unsent;
ALTER TABLE outbox DROP COLUMN IF EXISTS sent_at;
