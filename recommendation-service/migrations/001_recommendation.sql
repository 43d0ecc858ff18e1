-- Per-product statistics: sums, so orders and views fold in any order. The description is
-- last-writer-wins: described_at is the event time that set it.
CREATE TABLE products (
    product_id   text PRIMARY KEY,
    description  text,
    described_at timestamptz,
    orders       integer NOT NULL DEFAULT 0,
    quantity     bigint  NOT NULL DEFAULT 0,
    buyers       integer NOT NULL DEFAULT 0,
    views        bigint  NOT NULL DEFAULT 0
);
-- GET /products/popular, and the fallback of recommendations.
CREATE INDEX products_popularity ON products (buyers DESC, quantity DESC, product_id);

-- What each customer bought: the basis of distinct-buyer and co-purchase counts.
CREATE TABLE customer_products (
    customer_id     text        NOT NULL,
    product_id      text        NOT NULL,
    first_bought_at timestamptz NOT NULL,
    last_bought_at  timestamptz NOT NULL,
    times_bought    integer     NOT NULL,
    PRIMARY KEY (customer_id, product_id)
);
-- A customer's most recently bought products, read per batch (pairing) and per request (seeds).
CREATE INDEX customer_products_recent
    ON customer_products (customer_id, last_bought_at DESC, product_id DESC);

-- "Customers who bought X also bought Y": distinct customers who bought both, stored in both
-- directions so that either product finds its partners by primary key.
CREATE TABLE co_purchases (
    product_id       text    NOT NULL,
    other_product_id text    NOT NULL,
    buyers           integer NOT NULL,
    PRIMARY KEY (product_id, other_product_id)
);

-- What each customer looked at.
CREATE TABLE product_views (
    customer_id    text        NOT NULL,
    product_id     text        NOT NULL,
    views          integer     NOT NULL,
    last_viewed_at timestamptz NOT NULL,
    PRIMARY KEY (customer_id, product_id)
);
