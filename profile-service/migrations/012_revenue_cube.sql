-- The OLAP cube, precomputed: every combination of segment (any the customer is a member of),
-- RFM segment, country, channel and month (32 grouping sets, with a distinct count of customers
-- in each) per currency. Computed per request
-- it grew with the facts: 0.2 s for the Online Retail file, 17 s by four dimensions at a million
-- customers, and a gateway deadline of 2 s turned it into 504s under load. The worker rewrites
-- it after each refresh of the RFM scores (the segment dimension is theirs), so a read is an
-- index range of cells and the figures are as of `computed_at`. Computed at wall-clock times
-- from the projection, not folded: a rebuild does not compare it (the profile's rebuild rules).
CREATE TABLE computed_revenue_cube (
    currency    text        NOT NULL,
    rolled_up   integer     NOT NULL, -- GROUPING bits: segment 16, RFM segment 8, country 4,
                                      -- channel 2, month 1
    segment     text,
    rfm_segment text,
    country     text,
    channel     text,
    month       text,
    customers   bigint      NOT NULL,
    orders      bigint      NOT NULL,
    revenue     numeric     NOT NULL,
    computed_at timestamptz NOT NULL
);
CREATE INDEX computed_revenue_cube_cells ON computed_revenue_cube (currency, rolled_up);
