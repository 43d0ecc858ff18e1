-- The product catalogue, trending per scope and segment membership (issue 9; docs/decisions.md,
-- "Catalogue, filters and trending").

-- Each product's latest catalogue record (crm.product.catalogued.v1), last writer wins by
-- (recorded_at, source, event_id) as consents; first_listed_at is the earliest listing of all.
CREATE TABLE catalogue (
    product_id      text          PRIMARY KEY,
    name            text          NOT NULL,
    description     text,
    category        text,
    price           numeric(11, 4) NOT NULL,
    currency        text          NOT NULL,
    available       boolean       NOT NULL,
    kind            text          NOT NULL,
    first_listed_at timestamptz   NOT NULL,
    recorded_at     timestamptz   NOT NULL,
    source          text          NOT NULL,
    event_id        text          NOT NULL
);
CREATE INDEX catalogue_category ON catalogue (category, product_id);

-- A catalogued product's `goods` comes from its kind, no longer from its code; listed_at is its
-- first listing: new arrivals are ordered by it, or by the first sale of products never listed.
ALTER TABLE products ADD COLUMN catalogued boolean NOT NULL DEFAULT false;
ALTER TABLE products ADD COLUMN listed_at timestamptz;
CREATE INDEX products_arrivals
    ON products ((COALESCE(listed_at, first_sold_at)) DESC, product_id) WHERE goods;

-- Decayed purchases per scope ('' everyone, 'country:GB', 'segment:vip') and product: the sum of
-- round(2^((t - 2000-01-01) / half-life) x 10^9) over the purchases' event times, an integer, so
-- sums are exact in any order and the ranking at any instant is the order of score.
CREATE TABLE trending (
    scope          text        NOT NULL,
    product_id     text        NOT NULL,
    score          numeric     NOT NULL,
    purchases      bigint      NOT NULL,
    last_bought_at timestamptz NOT NULL,
    PRIMARY KEY (scope, product_id)
);
CREATE INDEX trending_ranked ON trending (scope, score DESC, product_id);

-- Segment membership from crm.segment.entered.v1 / left.v1: the higher version wins.
CREATE TABLE segment_members (
    customer_id text    NOT NULL,
    segment     text    NOT NULL,
    member      boolean NOT NULL,
    version     bigint  NOT NULL,
    PRIMARY KEY (customer_id, segment)
);
