-- Totals must hold what the contract allows (crm_shared/events.py): one order at the bounds is
-- 2000 lines x 1,000,000 units x 1,000,000.0000 = 2e15, beyond numeric(16, 4). numeric(28, 4)
-- holds 1e24, half a billion such orders; 28 digits is also Python's default Decimal precision,
-- so the sums computed in Python stay exact. Order and refund counts grow with every event.
ALTER TABLE purchase_totals
    ALTER COLUMN orders TYPE bigint,
    ALTER COLUMN refunds TYPE bigint,
    ALTER COLUMN gross_revenue TYPE numeric(28, 4),
    ALTER COLUMN refunded TYPE numeric(28, 4);
