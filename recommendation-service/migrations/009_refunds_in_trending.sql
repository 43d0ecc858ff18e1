-- Refunds count against trending (issue 9: negative signals; docs/decisions.md, "Refunds count
-- against trending"): a refund subtracts its weight from the scopes it counts in, so a row may
-- hold refunds only, with no purchase to date it.
ALTER TABLE trending ALTER COLUMN last_bought_at DROP NOT NULL;
