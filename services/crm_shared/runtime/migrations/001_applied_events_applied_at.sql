-- Pruning reads applied_events oldest first (applied_at < window start, in bounded chunks):
-- without this index every chunk would scan the whole table.
CREATE INDEX IF NOT EXISTS applied_events_applied_at ON applied_events (applied_at);
