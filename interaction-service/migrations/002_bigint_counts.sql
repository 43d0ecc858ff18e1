-- Every count of the contact summary grows with each event of one customer; a shared customer id
-- (a till's anonymous "walk-in" customer) can pass 2^31 events, so they are bigint like the sum.
ALTER TABLE contact_summary
    ALTER COLUMN touchpoints TYPE bigint,
    ALTER COLUMN contacts TYPE bigint,
    ALTER COLUMN inbound TYPE bigint,
    ALTER COLUMN outbound TYPE bigint,
    ALTER COLUMN refusals TYPE bigint,
    ALTER COLUMN complaints TYPE bigint,
    ALTER COLUMN feedback TYPE bigint;
